"""nn.ConvTranspose2d in the eager flow: a fake-quant module for calibration / QAT, and its int8 conversion.

torch.ao maps ConvTranspose2d to an int8 module at convert time (`nnq.ConvTranspose2d`) but has
no QAT module for it, so without one its weights would stay float in every fake-quantized run and
be re-observed at conversion (learned QAT ranges lost). `FakeQuantConvTranspose2d` fake-quantizes
its weight like torch.ao's QAT Conv2d; `Int8ConvTranspose2d` converts from its trained weight
quantizer. Weights are per tensor: fbgemm and x86 refuse per-channel weights for transposed
convolutions ("Per Channel Quantization is currently disabled for transposed conv").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao import quantization as tq
from torch.ao.nn import quantized as nnq
from torch.ao.nn.quantized.modules.utils import _quantize_weight

WHY_PER_TENSOR = "transposed convolutions take per-tensor weights (fbgemm / x86 kernels refuse per-channel)"


class FakeQuantConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d whose weight passes through `qconfig.weight()` (a FakeQuantize) on every call."""

    _FLOAT_MODULE = nn.ConvTranspose2d

    def __init__(self, *args: Any, qconfig: tq.QConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
        weight = self.weight_fake_quant(self.weight)
        return F.conv_transpose2d(x, weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation)

    @classmethod
    def from_float(cls, mod: nn.ConvTranspose2d, use_precomputed_fake_quant: bool = False) -> FakeQuantConvTranspose2d:
        """The fake-quant twin of `mod` (prepare_qat's swap), sharing its weight and bias values."""
        qat = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            stride=mod.stride,
            padding=mod.padding,
            output_padding=mod.output_padding,
            groups=mod.groups,
            bias=mod.bias is not None,
            dilation=mod.dilation,
            padding_mode=mod.padding_mode,
            qconfig=mod.qconfig,
        )
        qat.weight = mod.weight
        qat.bias = mod.bias
        return qat


class Int8ConvTranspose2d(nnq.ConvTranspose2d):
    """nnq.ConvTranspose2d converted from a FakeQuantConvTranspose2d with that module's weight quantizer."""

    _FLOAT_MODULE = FakeQuantConvTranspose2d

    @classmethod
    def from_float(cls, mod: FakeQuantConvTranspose2d, use_precomputed_fake_quant: bool = False) -> nnq.ConvTranspose2d:
        fq = mod.weight_fake_quant
        fq(mod.weight)  # as torch.ao's QAT convs convert: observes only if the observer is still enabled
        qweight = _quantize_weight(mod.weight.float(), fq)
        qconv = nnq.ConvTranspose2d(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.output_padding,
            mod.groups,
            mod.bias is not None,
            mod.dilation,
            mod.padding_mode,
        )
        qconv.set_weight_bias(qweight, mod.bias)
        scale, zero_point = mod.activation_post_process.calculate_qparams()
        qconv.scale, qconv.zero_point = float(scale), int(zero_point)
        return qconv


def qat_mapping() -> dict[type[nn.Module], type[nn.Module]]:
    """prepare_qat's module swaps: torch.ao's defaults plus ConvTranspose2d."""
    return {**tq.quantization_mappings.get_default_qat_module_mappings(), nn.ConvTranspose2d: FakeQuantConvTranspose2d}


def convert_mapping() -> dict[type[nn.Module], type[nn.Module]]:
    """convert's module swaps: torch.ao's defaults plus the fake-quant ConvTranspose2d."""
    return {**tq.quantization_mappings.get_default_static_quant_module_mappings(), FakeQuantConvTranspose2d: Int8ConvTranspose2d}


def transposed_int8_is_exact(engine: str, layer: nn.ConvTranspose2d, weight_range: tuple[int, int], symmetric: bool) -> bool:
    """Self-test: does this engine's int8 ConvTranspose2d of `layer`'s geometry compute what fake quantization does?

    Seeded random int8 weights and inputs; the kernel's output must match the float transposed
    convolution of the dequantized operands within one output step. Which geometries fail depends on
    the engine and the CPU (docs/results/2026-12-01-transposed-int8.md); a failing layer stays float.
    Affine weights (`symmetric=False`) are also tried with non-zero weight zero points: on an AMD EPYC
    Zen 4 the x86 engine's 2x2 / stride 2 kernel is exact with a zero point of 0 and wrong by
    hundreds of output steps with 3 or -20 (docs/results/2026-12-06-transposed-int8-zero-point.md).
    """
    zero_points = (0,) if symmetric else (0, 3, -20)
    inputs = ((2, 5), (3, 9))  # (batch, side): the kernels' errors also come and go with the input's size
    return all(kernel_matches(engine, layer, weight_range, zp, *shape) for zp in zero_points for shape in inputs)


def kernel_matches(
    engine: str, layer: nn.ConvTranspose2d, weight_range: tuple[int, int], weight_zero_point: int, batch: int = 2, side: int = 5
) -> bool:
    """One trial of the self-test: weights of this zero point (clamped into the weight range), inputs [batch, in, side, side]."""
    previous = torch.backends.quantized.engine
    gen = torch.Generator().manual_seed(0)
    qmin, qmax = weight_range
    zp = max(qmin, min(qmax, weight_zero_point))
    try:
        torch.backends.quantized.engine = engine
        wq = torch.randint(qmin, qmax + 1, layer.weight.shape, generator=gen, dtype=torch.int8)
        weight = torch._make_per_tensor_quantized_tensor(wq, 0.01, zp)
        conv = nnq.ConvTranspose2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.groups,
            True,
            layer.dilation,
        )
        conv.set_weight_bias(weight, torch.zeros(layer.out_channels))
        x = torch.quantize_per_tensor(torch.rand(batch, layer.in_channels, side, side, generator=gen), 1 / 255, 0, torch.quint8)
        ref = F.conv_transpose2d(
            x.dequantize(),
            weight.dequantize(),
            None,
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.groups,
            layer.dilation,
        )
        conv.scale, conv.zero_point = float(ref.abs().max()) / 127 + 1e-8, 128
        return bool(((conv(x).dequantize() - ref).abs() <= 1.01 * conv.scale).all())
    except RuntimeError:
        return False
    finally:
        torch.backends.quantized.engine = previous
