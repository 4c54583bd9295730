"""Q-Diffusion's split shortcut: quantize the two halves of a skip concatenation with their own ranges.

The upsampled path and the skip branch have very different activation ranges; one shared scale
wastes the grid on the smaller one. int8 kernels take one scale per tensor, so split layers run
fake-quantized.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class SplitFakeQuantize(nn.Module):
    """Applies `first` to channels [:split] and `second` to channels [split:] (dim 1)."""

    def __init__(self, split: int, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.split = split
        self.first = first
        self.second = second

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.first(x[:, : self.split]), self.second(x[:, self.split :])], dim=1)


def concat_splits(model: nn.Module) -> dict[str, int]:
    """The model's skip-concatenation layers, if it declares them (`concat_splits()`), else none."""
    declare = getattr(model, "concat_splits", None)
    return declare() if callable(declare) else {}


def apply_split_shortcut(qmodel: nn.Module, splits: dict[str, int], wrapped: list[str]) -> list[str]:
    """Give each wrapped split layer's input quantizer a twin for the skip half; return the layers split."""
    done = []
    for name, split in splits.items():
        if name not in wrapped:
            continue
        stub = qmodel.get_submodule(name).quant
        original = stub.activation_post_process
        stub.activation_post_process = SplitFakeQuantize(split, original, copy.deepcopy(original))
        done.append(name)
    return done
