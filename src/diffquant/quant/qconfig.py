"""Build torch.ao QConfigs from bit widths, granularity and observer names (fake-quant based)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.ao.quantization import FakeQuantize, QConfig
from torch.ao.quantization import observer as obs

from diffquant.errors import check_choice, check_range
from diffquant.quant.observers import PercentileObserver


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

    def __post_init__(self) -> None:
        check_range("quant.weight_bits", self.weight_bits, 2, 8)
        if self.act_bits is not None:
            check_range("quant.act_bits", self.act_bits, 2, 8)
        check_choice("quant.granularity", self.granularity, ("per_channel", "per_tensor"))
        check_choice("quant.observer", self.observer, tuple(observer_classes()))
        check_range("quant.percentile", self.percentile, 50.0, 100.0)

    @property
    def is_int8(self) -> bool:
        """True when the converted model can run real int8 kernels (8-bit weights and activations)."""
        return self.weight_bits == 8 and self.act_bits == 8

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
    activation = FakeQuantize.with_args(
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
    return QConfig(activation=activation, weight=weight)
