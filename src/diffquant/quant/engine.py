"""The torch.ao quantized engine: availability, selection inside each job, and its int8 numerics on this CPU.

Int8 GEMMs on AVX2 without VNNI multiply u8 x s8 pairs with `vpmaddubsw` into a saturating int16
(255 x 127 x 2 = 64770 > 32767): a W8A8 model computes something else than its fake-quantized
twin. Halving either grid removes the overflow: 7-bit weights (255 x 64 x 2 = 32640, oneDNN's own
advice for such CPUs) or 7-bit activations (torch's `reduce_range`). A self-test runs the worst case
of each scheme on this machine; `backend.int8_scheme=auto` takes the first exact one.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import torch

from diffquant.errors import DiffquantError, check_choice
from diffquant.quant.machine import cpu_info

X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# Backends that are not torch.ao engines, and the engine their eager parts (the self-test, fp32 runs) use.
EAGER_ENGINE = {"x86_inductor": "x86"}
# GPU backends (quant/gpu): low-bit GEMMs on a CUDA GPU, no torch.ao engine; each one's low-bit format.
GPU_ENGINES = {"cuda_fp8": "fp8", "cuda_int8": "int8", "cuda_int4wo": "int4wo"}


@dataclass(frozen=True)
class Int8Scheme:
    """The integer grids an 8-bit layer uses: activations [0, act_qmax], weights [weight_qmin, weight_qmax]."""

    name: str
    act_qmax: int
    weight_qmin: int
    weight_qmax: int

    @property
    def reduce_range(self) -> bool:
        """7-bit activations (torch's `reduce_range`)."""
        return self.act_qmax == 127

    @property
    def reduce_weight_range(self) -> bool:
        """7-bit weights."""
        return self.weight_qmax == 63


# Preference order of `auto`: full grids, then 7-bit weights (per-channel, so cheaper in quality than
# halving the per-tensor activation grid), then 7-bit activations.
SCHEMES = {
    s.name: s for s in (Int8Scheme("w8a8", 255, -128, 127), Int8Scheme("w7a8", 255, -64, 63), Int8Scheme("w8a7", 127, -128, 127))
}
SCHEME_CHOICES = ("auto", *SCHEMES)


@dataclass(frozen=True)
class Int8Numerics:
    """The scheme a run uses and whether this machine's int8 kernels compute it exactly (self-test)."""

    scheme: Int8Scheme
    exact: bool
    engine: str

    def as_dict(self) -> dict[str, object]:
        """What results.json records."""
        return {
            "int8_scheme": self.scheme.name,
            "int8_exact": self.exact,
            "reduce_range": self.scheme.reduce_range,
            "reduce_weight_range": self.scheme.reduce_weight_range,
        }


def supported_engines() -> list[str]:
    """Engines this PyTorch build can run (`none` excluded)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def set_engine(engine: str) -> None:
    """Select the quantized engine for this process; a clear error if the machine lacks it (GPU backends: nothing to select)."""
    if engine in GPU_ENGINES:
        return
    engine = EAGER_ENGINE.get(engine, engine)
    available = supported_engines()
    if engine not in available:
        raise DiffquantError(f"backend.engine={engine!r} is not available on this machine; available: {', '.join(available)}")
    if engine == "qnnpack" and platform.machine().lower() in X86_MACHINES:
        logging.getLogger("diffquant").warning(
            "backend.engine='qnnpack' on an %s CPU will be slow: its int8 kernels are written for ARM; use backend=x86 "
            "or backend=fbgemm unless you are checking qnnpack numerics",
            platform.machine(),
        )
    torch.backends.quantized.engine = engine


def _worst_case_is_exact(act: int, weight: int) -> bool:
    """One int8 conv of 576 products act x weight (64 channels x 3x3) on the current engine: exact result?"""
    from torch.ao.nn import quantized as nnq

    expected = act * weight * 576
    conv = nnq.Conv2d(64, 1, 3, padding=1, bias=False)
    conv.set_weight_bias(
        torch.quantize_per_channel(
            torch.full((1, 64, 3, 3), float(weight)), torch.ones(1), torch.zeros(1, dtype=torch.long), 0, torch.qint8
        ),
        None,
    )
    conv.scale, conv.zero_point = 2.0 * abs(expected) / 250.0, 128  # the result lands mid-grid, either sign
    x = torch.quantize_per_tensor(torch.full((1, 64, 5, 5), float(act)), 1.0, 0, torch.quint8)
    got = float(conv(x).dequantize()[0, 0, 2, 2])
    return abs(got - expected) <= conv.scale  # one output step: rounding, not overflow


def scheme_is_exact(engine: str, scheme: Int8Scheme) -> bool:
    """Self-test: do the scheme's extreme products (largest activation x both weight extremes) come out exact?"""
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = EAGER_ENGINE.get(engine, engine)
        return all(_worst_case_is_exact(scheme.act_qmax, w) for w in (scheme.weight_qmin, scheme.weight_qmax))
    finally:
        torch.backends.quantized.engine = previous


def resolve_int8_numerics(engine: str, setting: str) -> Int8Numerics:
    """`backend.int8_scheme`: a named scheme as given, or `auto`: the first exact one in SCHEMES order."""
    check_choice("backend.int8_scheme", setting, SCHEME_CHOICES)
    if engine in GPU_ENGINES:  # GPU int8 GEMMs accumulate in int32: the full grids are exact; fp8 / int4 use no int8 grid
        return Int8Numerics(SCHEMES["w8a8"], True, engine)
    if setting != "auto":
        return Int8Numerics(SCHEMES[setting], scheme_is_exact(engine, SCHEMES[setting]), engine)
    for scheme in SCHEMES.values():
        if scheme_is_exact(engine, scheme):
            return Int8Numerics(scheme, True, engine)
    return Int8Numerics(SCHEMES["w8a7"], False, engine)


def require_exact(numerics: Int8Numerics, setting: str) -> None:
    """Refuse to run int8 kernels that would not compute what the run claims (saturating accumulation)."""
    if numerics.exact:
        return
    cpu = cpu_info()
    exact = [name for name, s in SCHEMES.items() if scheme_is_exact(numerics.engine, s)]
    raise DiffquantError(
        f"backend.int8_scheme={setting}: {numerics.engine}'s int8 kernels saturate their 16-bit pair sums for "
        f"{numerics.scheme.name} on this CPU ({cpu.model}, {cpu.isa_class}: no VNNI); use backend.int8_scheme=auto"
        + (f" or one of {', '.join(exact)}" if exact else " (no exact scheme here: use backend=qnnpack)")
    )
