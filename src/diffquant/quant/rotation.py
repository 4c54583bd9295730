"""Hadamard rotation of layer inputs (QuaRot; ConvRot / DiRotQ for diffusion transformers): outliers spread before rounding.

For an orthogonal R, y = W x = (W R)(Rᵀ x): the weights are rotated once (W R, folded), the input
is rotated online by a forward pre-hook (`InputRotation`, moved ahead of the input quantizer like
SmoothQuant's scales). A Walsh-Hadamard R mixes every channel into every other with equal weight,
so one channel's outlier is spread over all of them and a per-tensor grid fits them all. R is
block-diagonal with the largest power-of-two Hadamard block that divides the width (384 = 3 x 128).
Folding the input rotation into the layer that produces the input (no online cost) needs the
model's graph and is not done here.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from diffquant.quant.smoothing import InputTransform


def hadamard(n: int) -> Tensor:
    """Orthonormal block-diagonal Walsh-Hadamard matrix of size n (blocks: the largest power of two dividing n)."""
    block = n & -n  # the largest power of two dividing n
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / h.shape[0] ** 0.5
    return torch.block_diag(*([h] * (n // block))).float()


class InputRotation(InputTransform):
    """Forward pre-hook: the input's channels times R (x R; channels last for Linear, axis 1 for 1x1 convs)."""

    def __init__(self, rotation: Tensor, conv: bool) -> None:
        self.rotation, self.conv = rotation, conv

    def __call__(self, _module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0]
        r = self.rotation.to(x.device, x.dtype)
        rotated = (x.movedim(1, -1) @ r).movedim(-1, 1) if self.conv else x @ r
        return (rotated, *args[1:])


def rotatable(module: nn.Module) -> bool:
    """Linear layers and 1x1 ungrouped Conv2d (a per-pixel Linear over channels) with more than one input channel."""
    if isinstance(module, nn.Linear):
        return module.in_features > 1
    return type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1 and module.in_channels > 1


@torch.no_grad()
def rotate(model: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """In place: every rotatable layer gets W R and an online x R (float output unchanged); their names."""
    skipped = tuple(skip)
    done = []
    for name, layer in model.named_modules():
        if not name or not rotatable(layer) or any(fnmatchcase(name, p) for p in skipped):
            continue
        n = layer.weight.shape[1]
        r = hadamard(n).to(layer.weight.device)
        w = layer.weight.data
        layer.weight.data = (w.reshape(w.shape[0], n) @ r).reshape(w.shape)
        layer.register_forward_pre_hook(InputRotation(r, isinstance(layer, nn.Conv2d)))
        done.append(name)
    return done
