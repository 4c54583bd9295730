"""diffquant: quantize diffusion models (PTQ / QAT on torch.ao int8 engines) with Hydra-configured runs.

The Python API (docs/api.md): `calibration_pairs`, `quantize`, `save`, `load`. They are imported on
first use, so `import diffquant` stays light (the CLI checks its config before loading torch.ao).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["calibration_pairs", "quantize", "save", "load"]


def __getattr__(name: str) -> Any:
    """`diffquant.quantize` and friends, from diffquant.quant.api / diffquant.quant.saving."""
    if name in ("calibration_pairs", "quantize"):
        from diffquant.quant import api

        return getattr(api, name)
    if name in ("save", "load"):
        from diffquant.quant import saving

        return getattr(saving, name)
    raise AttributeError(f"module 'diffquant' has no attribute {name!r}")
