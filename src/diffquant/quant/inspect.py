"""Read-only views of a quantized model for logging: activation quantizer ranges and layer inputs.

Works for both executions: fake-quantized models (`FakeQuantize` after calibration) and converted
int8 models (`Quantize` stubs and quantized layers carrying scale / zero point).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantize, QuantWrapper

from diffquant.quant.wrap import quantizable_types

# Integer grids of the quantized dtypes an int8 model stores activations in.
_DTYPE_GRID = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1)}


def _grid_range(scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[float, float]:
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def quantizer_range(module: nn.Module) -> tuple[float, float] | None:
    """Float range representable by the activation quantizer of `module`, or None if it has none.

    Fake quantization: (quant_min - zero_point) * scale .. (quant_max - zero_point) * scale. After
    int8 conversion the module keeps only scale and zero point, so the dtype's full grid is used.
    """
    fq = getattr(module, "activation_post_process", None)
    if isinstance(fq, FakeQuantize):
        return _grid_range(float(fq.scale.flatten()[0]), int(fq.zero_point.flatten()[0]), int(fq.quant_min), int(fq.quant_max))
    if type(module).__module__.startswith("torch.ao.nn.quantized") and hasattr(module, "scale") and hasattr(module, "zero_point"):
        scale, zero_point = module.scale, module.zero_point
        scale = float(scale.flatten()[0]) if isinstance(scale, Tensor) else float(scale)
        zero_point = int(zero_point.flatten()[0]) if isinstance(zero_point, Tensor) else int(zero_point)
        qmin, qmax = _DTYPE_GRID.get(getattr(module, "dtype", torch.quint8), (0, 255))
        return _grid_range(scale, zero_point, qmin, qmax)
    return None


def activation_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """`<layer>.input` / `<layer>.output` -> (low, high) of every wrapped layer's activation quantizers."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantWrapper):
            continue
        for side, child in (("input", module.quant), ("output", module.module)):
            found = quantizer_range(child)
            if found is not None:
                ranges[f"{name}.{side}"] = found
    return ranges


def probed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose inputs get quantized: QuantWrappers, or for a float model its Conv2d / Linear."""
    wrappers = {name: m for name, m in model.named_modules() if isinstance(m, QuantWrapper)}
    if wrappers:
        return wrappers
    return {name: m for name, m in model.named_modules() if name and isinstance(m, quantizable_types())}


@torch.no_grad()
def layer_inputs(model: nn.Module, run: Callable[[], Any], max_values: int = 65536) -> dict[str, Tensor]:
    """Float inputs each probed layer receives while `run()` executes (flattened, at most `max_values`)."""
    seen: dict[str, list[Tensor]] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor) and args[0].is_floating_point():
                seen.setdefault(name, []).append(args[0].detach().flatten().float().cpu())

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in probed_layers(model).items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, chunks in seen.items():
        values = torch.cat(chunks)
        if values.numel() > max_values:  # a seeded random subset: a stride could alias with channels
            values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:max_values]]
        out[name] = values
    return out
