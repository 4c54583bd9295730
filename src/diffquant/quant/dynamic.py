"""Dynamic input quantization: each call's own range sets the scale of a layer's input.

A diffusion model's inputs change range with the timestep: x_T ~ N(0, 1) spans ±4 while the
last steps see x_t ≈ x_0 in [-1, 1] with noise of std 0.01-0.1. One static scale fitted to the
whole trajectory is several times too coarse at the end, where errors are amplified by 1/σ_t. Sampling
batches share one t, so a per-call scale is a per-timestep scale. The layer's output keeps its
calibrated static scale; the int8 kernels are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from diffquant.quant.execution.fast_int8 import quantize_dynamic
from diffquant.quant.number_formats import FormatFakeQuantize


def dynamic_qparams(x: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """Affine scale / zero point covering [min(x, 0), max(x, 0)] on the grid [qmin, qmax]."""
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((hi - lo) / float(qmax - qmin), min=1e-8)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale.reshape(1), zero_point.reshape(1)


class DynamicFakeQuantize(FakeQuantizeBase):
    """Fake-quantizes with the current tensor's own min / max (no calibrated state)."""

    def __init__(self, quant_min: int, quant_max: int) -> None:
        super().__init__()
        self.quant_min, self.quant_max = quant_min, quant_max
        self.dtype = torch.quint8
        self.qscheme = torch.per_tensor_affine

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fake_quant_enabled[0]):
            return x
        scale, zero_point = dynamic_qparams(x, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.quant_min, self.quant_max)

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # convert asks; the int8 module ignores it
        return torch.ones(1), torch.zeros(1, dtype=torch.int32)


class DynamicQuantize(nn.Module):
    """int8 counterpart: quantize_per_tensor_dynamic's scale on every call (replaces a converted Quantize)."""

    def __init__(self, reduce_range: bool) -> None:
        super().__init__()
        self.reduce_range = reduce_range

    def forward(self, x: Tensor) -> Tensor:
        return quantize_dynamic(x, self.reduce_range)


def use_dynamic_inputs(qmodel: nn.Module, wrapped: list[str]) -> None:
    """Before calibration: swap each wrapped layer's input FakeQuantize for a dynamic one of the same grid."""
    for name in wrapped:
        stub = qmodel.get_submodule(name).quant
        fq = stub.activation_post_process
        if isinstance(fq, FormatFakeQuantize):  # a simulated format: its range comes from each call instead
            fq.dynamic = True
            continue
        stub.activation_post_process = DynamicFakeQuantize(int(fq.quant_min), int(fq.quant_max))


def use_dynamic_int8_inputs(qmodel: nn.Module, wrapped: list[str], reduce_range: bool) -> None:
    """After conversion: each wrapped layer's Quantize computes its scale per call."""
    for name in wrapped:
        qmodel.get_submodule(name).quant = DynamicQuantize(reduce_range)
