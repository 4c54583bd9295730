"""Build torch.ao QConfigs from bit widths, granularity and observer names (fake-quant based)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.ao.quantization import FakeQuantize, QConfig
from torch.ao.quantization import observer as obs

from diffquant.errors import check_choice, check_range
from diffquant.quant.number_formats import FormatFakeQuantize, check_format
from diffquant.quant.observers import DeferredFakeQuantize, PercentileObserver


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how: the part of the `quant` / `backend` groups a qconfig needs."""

    weight_bits: int = 8
    act_bits: int | None = 8  # None: activations stay float (weight-only quantization)
    granularity: str = "per_channel"  # per_channel | per_tensor
    symmetric: bool = False
    observer: str = "histogram"  # minmax | moving_average | histogram | percentile
    percentile: float = 99.99
    reduce_range: bool = True  # 7-bit activations at 8 bits (one overflow guard of AVX2 int8 kernels, see engine.py)
    reduce_weight_range: bool = False  # 7-bit weights at 8 bits (the other guard: [-64, 63])
    weight_format: str = "int"  # int | fp8_e4m3 | fp8_e5m2 | mxfp4 | nvfp4 (simulated, number_formats.py)
    act_format: str = "int"
    group_size: int = 0  # > 0: integer weights with one scale per group of this many inputs (simulated)

    def __post_init__(self) -> None:
        check_range("quant.weight_bits", self.weight_bits, 2, 8)
        if self.act_bits is not None:
            check_range("quant.act_bits", self.act_bits, 2, 8)
        check_choice("quant.granularity", self.granularity, ("per_channel", "per_tensor"))
        check_choice("quant.observer", self.observer, tuple(observer_classes()))
        check_range("quant.percentile", self.percentile, 50.0, 100.0)
        check_format("quant.weight_format", self.weight_format)
        check_format("quant.act_format", self.act_format)
        check_range("quant.group_size", self.group_size, 0)

    @property
    def is_int8(self) -> bool:
        """True when the converted model can run real int8 kernels (8-bit integer weights per channel / tensor and activations)."""
        integer = self.weight_format == "int" and self.act_format == "int" and self.group_size == 0
        return integer and self.weight_bits == 8 and self.act_bits == 8

    @property
    def simulated_formats(self) -> bool:
        """Whether weights or activations use a format torch.ao cannot convert (fp8, MX / NV FP4, integer groups)."""
        return self.weight_format != "int" or self.act_format != "int" or self.group_size > 0

    def act_range(self) -> tuple[int, int]:
        """(quant_min, quant_max) of the unsigned activation grid."""
        bits = 8 if self.act_bits is None else self.act_bits
        if bits == 8 and self.reduce_range:
            return 0, 127
        return 0, 2**bits - 1

    def weight_range(self) -> tuple[int, int]:
        """(quant_min, quant_max) of the signed weight grid."""
        if self.weight_bits == 8 and self.reduce_weight_range:
            return -64, 63
        return -(2 ** (self.weight_bits - 1)), 2 ** (self.weight_bits - 1) - 1


def observer_classes() -> dict[str, type[obs.ObserverBase]]:
    """Activation observers selectable with `quant.observer`."""
    return {
        "minmax": obs.MinMaxObserver,
        "moving_average": obs.MovingAverageMinMaxObserver,
        "histogram": obs.HistogramObserver,
        "percentile": PercentileObserver,
    }


def make_qconfig(spec: QuantSpec) -> QConfig:
    """A QConfig of FakeQuantize modules: usable by prepare_qat, by calibration, and by convert to int8."""
    qmin, qmax = spec.act_range()
    extra_obs = {"percentile": spec.percentile} if spec.observer == "percentile" else {}
    activation = DeferredFakeQuantize.with_args(
        observer=observer_classes()[spec.observer],
        quant_min=qmin,
        quant_max=qmax,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        **extra_obs,
    )
    if spec.act_bits is None:  # weight-only: activations pass through unobserved
        activation = obs.NoopObserver.with_args(dtype=torch.float32)
    wmin, wmax = spec.weight_range()
    if spec.granularity == "per_channel":
        qscheme = torch.per_channel_symmetric if spec.symmetric else torch.per_channel_affine
        weight_observer: type[obs.ObserverBase] = obs.PerChannelMinMaxObserver
        extra = {"ch_axis": 0}
    else:
        qscheme = torch.per_tensor_symmetric if spec.symmetric else torch.per_tensor_affine
        weight_observer, extra = obs.MinMaxObserver, {}
    weight = FakeQuantize.with_args(
        observer=weight_observer, quant_min=wmin, quant_max=wmax, dtype=torch.qint8, qscheme=qscheme, **extra
    )
    if spec.weight_format != "int" or spec.group_size:
        weight = FormatFakeQuantize.with_args(
            fmt=spec.weight_format, weight=True, bits=spec.weight_bits, group_size=spec.group_size
        )
    if spec.act_format != "int" and spec.act_bits is not None:
        activation = FormatFakeQuantize.with_args(fmt=spec.act_format)
    return QConfig(activation=activation, weight=weight)
