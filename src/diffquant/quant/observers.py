"""Observers torch.ao lacks: a percentile observer that clips activation outliers, and a FakeQuantize
that asks its observer for (scale, zero point) only when they are used."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase
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


class RefreshedOnUse(FakeQuantizeBase):
    """A fake quantizer whose (scale, zero point) lag its observers until `refresh`: brought up to date
    when the observer or fake quantization is switched and before a state dict (and by the subclass
    before a fake-quantized call)."""

    def refresh(self) -> None:
        """Derive the current (scale, zero point) from the observers, if they saw data since the last call."""
        raise NotImplementedError

    @torch.jit.export
    def enable_observer(self, enabled: bool = True) -> None:
        self.refresh()
        super().enable_observer(enabled)

    @torch.jit.export
    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.refresh()
        super().enable_fake_quant(enabled)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:  # type: ignore[override]
        self.refresh()
        super()._save_to_state_dict(destination, prefix, keep_vars)


class DeferredFakeQuantize(RefreshedOnUse, FakeQuantize):
    """FakeQuantize that derives (scale, zero point) from its observer when they are used, not on every call.

    torch.ao's FakeQuantize asks for them after every observed batch. With the histogram observer that is
    a search over its bins per call (about half of calibration's time on the CPU, and a chain of small
    synchronising kernels on a GPU), while calibration runs with fake quantization off and reads them
    once at the end. Here an observed batch only marks them stale; they are brought up to date before a
    fake-quantized call, when the observer or fake quantization is switched, and before a state dict.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stale = False

    def refresh(self) -> None:
        """Copy the observer's current (scale, zero point) into the buffers, if it saw data since the last copy."""
        if not self.stale:
            return
        self.stale = False
        scale, zero_point = self.calculate_qparams()
        if self.scale.shape != scale.shape:
            self.scale.resize_(scale.shape)
            self.zero_point.resize_(zero_point.shape)
        self.scale.copy_(scale.to(self.scale.device))
        self.zero_point.copy_(zero_point.to(self.zero_point.device))

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            self.stale = True
        if self.fake_quant_enabled[0] != 1:
            return x
        self.refresh()
        qmin, qmax = self.activation_post_process.quant_min, self.activation_post_process.quant_max
        if self.is_per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.ch_axis, qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)
