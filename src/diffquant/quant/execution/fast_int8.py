"""Fast eager execution of a converted int8 model: the same numerics, fewer copies and calls.

Profiling the default UNet's int8 sampling (fbgemm and x86 engines; docs/results/2026-11-26-int8-profile.md)
showed where the time went besides the int8 convolutions, which emit channels_last tensors:
- `torch.quantize_per_tensor_dynamic` copies a channels_last input to contiguous before it reads
  its range: one full float copy per layer. `quantize_dynamic` computes the identical scale and
  zero point from one `aminmax` over the tensor as it lies in memory.
- `nn.GroupNorm` on channels_last input runs several times slower than on contiguous input.
  `ChannelsLastGroupNorm` computes the group statistics with two reductions over the
  contiguous channel axis and normalizes in one fused multiply-add, in channels_last.
- `QuantWrapper` calls three modules per layer; `Int8Wrapper` dequantizes inline.
- The x86 engine runs its oneDNN kernels only for weights with zero points 0 (symmetric); affine
  weights fall back to FBGEMM's slower kernels: a warning says so.
- `conv_at` / `linear_at` take the output scale as an argument (per-timestep scale tables read a
  row per call; `quant/timestep_scales.py`).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import QuantWrapper

SMALL_SCALE = 6.1e-5  # ATen's SMALL_SCALE_THRESHOLD in ChooseQuantizationParams
SMALL_INPUT = 16384  # below this many elements ATen's one-call op beats aminmax + Python arithmetic


def choose_qparams(lo: float, hi: float, qmax: int, small_scale: float = SMALL_SCALE) -> Optional[tuple[float, int]]:
    """ATen's `ChooseQuantizationParams` for the grid [0, qmax] in double precision, as ATen computes it.

    None where ATen would clamp a scale below 6.1e-5 (a near-constant tensor): let ATen decide.
    TorchScript compiles this function as it is (in `quantize_by_range`), hence `typing` and the default argument.
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax
    if scale < small_scale:
        return None
    from_min, from_max = -lo / scale, qmax - hi / scale
    zero_point = from_min if -abs(lo / scale) < qmax - abs(hi / scale) else from_max
    return scale, int(min(max(round(zero_point), 0), qmax))


def quantize_by_range(x: Tensor, qmax: int, reduce_range: bool) -> Tensor:
    """Quantize x to quint8 on [0, qmax] with the scale of its own range, read by one `aminmax` (TorchScript-able)."""
    flat = x.permute(0, 2, 3, 1) if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else x
    lo, hi = torch.aminmax(flat)
    qparams = choose_qparams(float(lo), float(hi), qmax)
    if qparams is not None:
        return torch.quantize_per_tensor(x, qparams[0], qparams[1], torch.quint8)
    return torch.quantize_per_tensor_dynamic(x, torch.quint8, reduce_range)


def quantize_dynamic(x: Tensor, reduce_range: bool) -> Tensor:
    """`torch.quantize_per_tensor_dynamic(x, quint8, reduce_range)`, bit for bit, without its contiguous copy.

    Under `torch.jit.trace` the TorchScript-compiled `quantize_by_range` runs instead: a trace would
    record this call's scale as a constant, the compiled function reads the range at every call.
    """
    if x.numel() < SMALL_INPUT:  # a shape: fixed within one trace
        return torch.quantize_per_tensor_dynamic(x, torch.quint8, reduce_range)
    qmax = 127 if reduce_range and torch.backends.quantized.engine != "qnnpack" else 255
    run = torch.jit.script(quantize_by_range) if torch.jit.is_tracing() else quantize_by_range
    return run(x, qmax, reduce_range)


class ChannelsLastGroupNorm(nn.GroupNorm):
    """GroupNorm that stays fast on channels_last input (large maps); otherwise `F.group_norm`."""

    min_pixels = 256  # below 16x16 ATen's kernel is as fast

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.dim() != 4
            or x.shape[2] * x.shape[3] < self.min_pixels
            or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        n, c, h, w = x.shape
        g = self.num_groups
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: channels are the contiguous axis
        mean = pixels.mean(1).view(n, g, -1).mean(2, keepdim=True)  # [n, g, 1]: broadcasts over a group's channels
        mean_sq = (pixels * pixels).mean(1).view(n, g, -1).mean(2, keepdim=True)
        rstd = torch.rsqrt((mean_sq - mean * mean).clamp(min=0) + self.eps)
        scale = rstd.expand(n, g, c // g) if self.weight is None else rstd * self.weight.view(1, g, -1)
        shift = -mean * scale if self.bias is None else self.bias.view(1, g, -1) - mean * scale
        return torch.addcmul(shift.reshape(n, c, 1, 1), x, scale.reshape(n, c, 1, 1))


class Int8Wrapper(QuantWrapper):
    """A converted QuantWrapper with one forward: quantize -> int8 layer -> dequantize."""

    def forward(self, X: Tensor) -> Tensor:
        return self.module(self.quant(X)).dequantize()


def has_weight_zero_points(model: nn.Module) -> bool:
    """True if some int8 conv weight has a non-zero zero point (affine weights)."""
    for module in model.modules():
        if isinstance(module, nnq.Conv2d):
            weight = module.weight()
            per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            if bool((weight.q_per_channel_zero_points() if per_channel else torch.tensor(weight.q_zero_point())).any()):
                return True
    return False


def speed_up_int8(model: nn.Module) -> nn.Module:
    """In place, after `convert`: fused wrappers and channels_last GroupNorm (same state_dict, same int8 numerics)."""
    for module in model.modules():
        if type(module) is QuantWrapper:
            module.__class__ = Int8Wrapper
        elif type(module) is nn.GroupNorm:
            module.__class__ = ChannelsLastGroupNorm
    if torch.backends.quantized.engine == "x86" and has_weight_zero_points(model):
        logging.getLogger("diffquant").warning(
            "backend=x86 with affine weights (quant.symmetric=false) runs FBGEMM's int8 convolutions; its faster oneDNN "
            "kernels need symmetric weights: quant.symmetric=true"
        )
    return model


# The int8 ops with the output scale as an argument: TorchScript-compiled under tracing, so a trace reads the
# table row at every call instead of recording one call's scale (as fast_int8.quantize_dynamic does).
def conv_at(x: Tensor, packed: torch.classes.quantized.Conv2dPackedParamsBase, scale: Tensor, zp: Tensor, kind: int) -> Tensor:
    """kind 0: conv2d, 1: conv2d_relu, 2: conv_transpose2d."""
    if kind == 1:
        return torch.ops.quantized.conv2d_relu(x, packed, float(scale), int(zp))
    if kind == 2:
        return torch.ops.quantized.conv_transpose2d(x, packed, float(scale), int(zp))
    return torch.ops.quantized.conv2d(x, packed, float(scale), int(zp))


def linear_at(x: Tensor, packed: torch.classes.quantized.LinearPackedParamsBase, scale: Tensor, zp: Tensor, relu: bool) -> Tensor:
    """quantized.linear (or linear_relu) with this output scale."""
    if relu:
        return torch.ops.quantized.linear_relu(x, packed, float(scale), int(zp))
    return torch.ops.quantized.linear(x, packed, float(scale), int(zp))
