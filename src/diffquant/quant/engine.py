"""The torch.ao quantized engine: check availability and set it inside each job."""
from __future__ import annotations

import logging
import platform

import torch

from diffquant.errors import DiffquantError

X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# Backends that are not torch.ao engines, and the engine their eager parts (the self-test, fp32 runs) use.
EAGER_ENGINE = {"x86_inductor": "x86"}


def supported_engines() -> list[str]:
    """Engines this PyTorch build can run (`none` excluded)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def set_engine(engine: str) -> None:
    """Select the quantized engine for this process; a clear error if the machine lacks it."""
    engine = EAGER_ENGINE.get(engine, engine)
    available = supported_engines()
    if engine not in available:
        raise DiffquantError(
            f"backend.engine={engine!r} is not available on this machine; available: {', '.join(available)}"
        )
    if engine == "qnnpack" and platform.machine().lower() in X86_MACHINES:
        # Measured on this project's x86 machine: an int8 3x3 conv, 64 channels, 16x16: 24 ms vs 2.7 (fbgemm), 1.7 (x86).
        logging.getLogger("diffquant").warning(
            "backend.engine='qnnpack' on an %s CPU will be slow: its int8 kernels are written for ARM and run about 10x "
            "slower here than fbgemm / x86; use backend=x86 or backend=fbgemm unless you are checking qnnpack numerics",
            platform.machine())
    torch.backends.quantized.engine = engine


def int8_accumulation_is_exact(engine: str) -> bool:
    """Self-test: does a worst-case int8 conv (all activations 255, all weights 127) come out exact?

    AVX2 kernels multiply u8 x s8 pairs into saturating int16 (vpmaddubsw); that is why fbgemm / x86
    default to 7-bit activations (`reduce_range`). VNNI / AVX-512 kernels accumulate in int32 exactly.
    """
    from torch.ao.nn import quantized as nnq

    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = EAGER_ENGINE.get(engine, engine)
        conv = nnq.Conv2d(64, 4, 3, padding=1, bias=False)
        weight = torch.quantize_per_channel(torch.ones(4, 64, 3, 3), torch.full((4,), 1 / 127), torch.zeros(4, dtype=torch.long), 0, torch.qint8)
        conv.set_weight_bias(weight, None)
        conv.scale, conv.zero_point = 4.0, 0
        x = torch.quantize_per_tensor(torch.ones(1, 64, 5, 5), 1 / 255, 0, torch.quint8)
        return float(conv(x).dequantize()[0, 0, 2, 2]) == 576.0
    finally:
        torch.backends.quantized.engine = previous


def resolve_reduce_range(engine: str, setting: bool | None) -> bool:
    """`backend.reduce_range`: an explicit true / false wins; null (auto) uses 8-bit activations where exact."""
    if setting is not None:
        return setting
    return engine != "qnnpack" and not int8_accumulation_is_exact(engine)
