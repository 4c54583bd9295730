"""What a quantized model weighs: its serialized state_dict, and its weights packed at their widths.

`state_dict_bytes` is what `torch.save` writes: packed int8 weights for converted modules, but float
tensors (and observers' state) for fake-quantized ones. `packed_bytes` is what a deployment of the
same weights would store (`model/packed_bytes` in results.json; mixed precision budgets use the same
model): each quantized layer's weight at its width with the scales of its format —
- `int` at b bits: ceil(numel·b/8) bytes, plus a float32 scale and an int32 zero point (8 bytes) per
  output channel, group or tensor;
- `fp8_e4m3` / `fp8_e5m2`: one byte per element and one float32 per tensor;
- `mxfp4`: half a byte per element and one E8M0 byte per block of 32 along each row;
- `nvfp4`: half a byte per element, one E4M3 byte per block of 16 along each row, one float32 per tensor;
and every other tensor of the FP32 state_dict (float layers, biases, norms) at its own size.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from diffquant.quant.number_formats import BLOCK, FP8_MAX
from diffquant.quant.wrap import layer_width

INT_SCALE_BYTES = 8  # float32 scale + int32 zero point


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())` (packed int8 weights for converted modules)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer at its own dtype (the state_dict's tensors, no container)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def scale_count(layer: nn.Module, granularity: str, group_size: int) -> int:
    """How many (scale, zero point) pairs a layer's integer weight keeps: per group, per output channel or per tensor."""
    weight: Tensor = layer.weight
    if group_size:
        return weight.numel() // group_size
    if granularity == "per_channel" and not isinstance(layer, nn.ConvTranspose2d):  # transposed: per tensor
        return weight.shape[0]
    return 1


def layer_bytes(numel: int, scales: int, bits: int) -> int:
    """Packed integer weight bytes at `bits`, plus a float32 scale and an int32 zero point per scale."""
    return math.ceil(numel * bits / 8) + INT_SCALE_BYTES * scales


def packed_weight_bytes(layer: nn.Module, bits: int, fmt: str, granularity: str, group_size: int) -> int:
    """Bytes of one layer's weight packed in `fmt` (integers at `bits`), scales included (see the module docstring)."""
    weight: Tensor = layer.weight
    if fmt == "int":
        return layer_bytes(weight.numel(), scale_count(layer, granularity, group_size), bits)
    if fmt in FP8_MAX:
        return weight.numel() + 4
    rows, cols = weight.shape[0], weight[0].numel()
    scales = rows * math.ceil(cols / BLOCK[fmt])  # blocks along each row, as number_formats pads them
    return math.ceil(weight.numel() / 2) + scales + (4 if fmt == "nvfp4" else 0)


def packed_bytes(
    fp_model: nn.Module,
    layers: Iterable[str],
    bits: int,
    fmt: str,
    granularity: str,
    group_size: int,
    layer_bits: Iterable[tuple[str, int]] = (),
    extra_bytes: int = 0,
) -> int:
    """`fp_model`'s tensors with each named layer's weight packed: at its `layer_bits` width (first matching
    pattern, as the qconfig picks it) or `bits`; `extra_bytes` (e.g. low-rank branches) added."""
    patterns = list(layer_bits)
    total = tensor_bytes(fp_model) + extra_bytes
    for name in layers:
        layer = fp_model.get_submodule(name)
        width = layer_width(name, patterns, bits)
        total += (
            packed_weight_bytes(layer, width, fmt, granularity, group_size) - layer.weight.numel() * layer.weight.element_size()
        )
    return total
