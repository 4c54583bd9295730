"""Observers torch.ao lacks: a percentile observer that clips activation outliers."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.ao.quantization.observer import MinMaxObserver


class PercentileObserver(MinMaxObserver):
    """Tracks the extremes of each batch's lower / upper `percentile` instead of its min / max.

    Clipping the rare outliers gives the bulk of the values a finer grid (PTQ practice for
    activations with long tails, e.g. after SiLU / GroupNorm in diffusion UNets).
    """

    def __init__(self, percentile: float = 99.99, max_elements: int = 1 << 20, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.max_elements = max_elements

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float().flatten()
        if x.numel() > self.max_elements:  # a fixed strided subsample keeps torch.quantile's input small
            x = x[:: x.numel() // self.max_elements + 1]
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0], device=x.device)
        lo, hi = torch.quantile(x, q)
        self.min_val.copy_(torch.minimum(self.min_val, lo) if self.min_val.numel() else lo)
        self.max_val.copy_(torch.maximum(self.max_val, hi) if self.max_val.numel() else hi)
        return x_orig
