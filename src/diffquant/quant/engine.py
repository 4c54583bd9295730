"""The torch.ao quantized engine: check availability and set it inside each job."""
from __future__ import annotations

import torch

from diffquant.errors import DiffquantError


def supported_engines() -> list[str]:
    """Engines this PyTorch build can run (`none` excluded)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def set_engine(engine: str) -> None:
    """Select the quantized engine for this process; a clear error if the machine lacks it."""
    available = supported_engines()
    if engine not in available:
        raise DiffquantError(
            f"backend.engine={engine!r} is not available on this machine; available: {', '.join(available)}"
        )
    torch.backends.quantized.engine = engine


def int8_accumulation_is_exact(engine: str) -> bool:
    """Self-test: does a worst-case int8 conv (all activations 255, all weights 127) come out exact?

    AVX2 kernels multiply u8 x s8 pairs into saturating int16 (vpmaddubsw); that is why fbgemm / x86
    default to 7-bit activations (`reduce_range`). VNNI / AVX-512 kernels accumulate in int32 exactly.
    """
    from torch.ao.nn import quantized as nnq

    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
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
