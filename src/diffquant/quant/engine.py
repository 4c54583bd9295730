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
