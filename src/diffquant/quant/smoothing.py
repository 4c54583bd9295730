"""SmoothQuant (Xiao et al., 2023) scale migration: activation outliers moved into the weights before quantization.

Per input channel j of a Linear or Conv2d: s_j = max|X_j|^α / max|W_·j|^(1−α) over the calibration
pairs; the weights become W·diag(s) and the input X·diag(1/s), so the float output is unchanged while
the input's per-channel ranges even out (one per-tensor activation scale then suits every channel).
The division runs as a forward pre-hook (`InputScale`): on the layer while it is float, moved onto
its quant -> layer -> dequant wrapper by `wrap.wrap_layers` (`move_input_transforms`), so the quantizer sees the smoothed input.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError

if TYPE_CHECKING:  # calibration imports the config, which imports wrap, which imports this module
    from diffquant.quant.calibration import CalibrationData


class InputTransform:
    """A forward pre-hook that changes a layer's input before its quantizer (`move_input_transforms` moves it there)."""

    def __call__(self, _module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError


class InputScale(InputTransform):
    """Forward pre-hook multiplying a layer's input by `inv` (1/s) along its channel axis (picklable)."""

    def __init__(self, inv: Tensor, conv: bool) -> None:
        self.inv, self.conv = inv, conv  # conv: channels on axis 1 (NCHW); Linear: the last axis

    def __call__(self, _module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0]
        shape = (1, -1, 1, 1) if self.conv else (-1,)
        return (x * self.inv.to(x.device, x.dtype).view(shape), *args[1:])


def smoothable(module: nn.Module) -> bool:
    """Linear layers and ungrouped Conv2d (per input channel, the weight's axis 1 is the input's channel axis)."""
    return isinstance(module, nn.Linear) or (type(module) is nn.Conv2d and module.groups == 1)


@torch.no_grad()
def input_channel_amax(model: nn.Module, names: list[str], data: CalibrationData, batch_size: int) -> dict[str, Tensor]:
    """Largest |input| per input channel of each named layer over the calibration pairs."""
    amax: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().abs()
            conv = isinstance(module, nn.Conv2d)
            per_channel = x.amax(dim=(0, 2, 3)) if conv else x.reshape(-1, x.shape[-1]).amax(dim=0)
            amax[name] = per_channel if name not in amax else torch.maximum(amax[name], per_channel)

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for inputs in data.batches(batch_size):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return amax


def smoothing_scales(act_amax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """s_j = act_j^α / w_j^(1−α) with w_j = max |W[:, j, ...]|; 1 where either is 0; clamped to [1e-4, 1e4]."""
    w = weight.detach().abs().transpose(0, 1).reshape(weight.shape[1], -1).amax(dim=1)
    s = act_amax.clamp(min=1e-8) ** alpha / w.clamp(min=1e-8) ** (1 - alpha)
    s = torch.where((act_amax > 0) & (w > 0), s, torch.ones_like(s))
    return s.clamp(1e-4, 1e4)


def smooth(model: nn.Module, data: CalibrationData, alpha: float, batch_size: int, skip: Iterable[str] = ()) -> list[str]:
    """In place: migrate every smoothable layer's input outliers into its weights (float output unchanged); their names."""
    if not 0.0 <= alpha <= 1.0:
        raise DiffquantError(f"quant.smooth_alpha={alpha} is out of range; allowed: 0..1 (0.5: SmoothQuant's default)")
    skipped = tuple(skip)
    names = [n for n, m in model.named_modules() if n and smoothable(m) and not any(fnmatchcase(n, p) for p in skipped)]
    amax = input_channel_amax(model, names, data, batch_size)
    done = []
    for name in names:
        if name not in amax:  # never called with a tensor input during calibration
            continue
        layer = model.get_submodule(name)
        s = smoothing_scales(amax[name].to(layer.weight.device), layer.weight, alpha)
        shape = (1, -1) + (1,) * (layer.weight.dim() - 2)
        layer.weight.data.mul_(s.view(shape))
        layer.register_forward_pre_hook(InputScale(1.0 / s, isinstance(layer, nn.Conv2d)))
        done.append(name)
    return done


def move_input_transforms(inner: nn.Module, wrapper: nn.Module) -> None:
    """Move `InputTransform` hooks (scales, rotations) from a layer onto its wrapper, ahead of its input quantizer."""
    for key, hook in list(inner._forward_pre_hooks.items()):
        if isinstance(hook, InputTransform):
            del inner._forward_pre_hooks[key]
            wrapper.register_forward_pre_hook(hook)
