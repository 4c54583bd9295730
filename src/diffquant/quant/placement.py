"""Where the post-training work runs: with `device=cuda` calibration, GPTQ, reconstruction, bias correction
and the sensitivity report run on the GPU, then the quantized model comes back to the CPU for conversion.

Only the CPU engines' int8 kernels need the CPU; everything before `finalize` is float math on a
fake-quantized copy, which the GPU runs many times faster than the one CPU thread calibration pins.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffquant.quant.calibration import CalibrationData

if TYPE_CHECKING:
    from diffquant.quant.plan import QuantContext


def on_device(model: nn.Module, ctx: QuantContext, device: str | torch.device) -> tuple[nn.Module, QuantContext]:
    """A copy of the float `model` and a context whose calibration pairs and example live on `device`.

    On the CPU both come back unchanged (no copy). The moved pairs are made once, on first use, and the
    original context keeps its CPU pairs (the cache, and tracing of a scripted int8 model, read those).
    """
    if torch.device(device).type == "cpu":
        return model, ctx
    moved: list[CalibrationData] = []

    def calibration() -> CalibrationData:
        if not moved:
            moved.append(ctx.calibration().to(device))
        return moved[0]

    example = None if ctx.example is None else tuple(part.to(device) for part in ctx.example)
    return copy.deepcopy(model).to(device), replace(ctx, calibration=calibration, example=example)
