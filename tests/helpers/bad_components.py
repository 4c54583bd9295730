"""Broken user models and loaders, one mistake each, for the error paths (diffquant never imports this)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoTimestep(nn.Module):
    """forward(x) only: the denoiser ignores t and cannot be called as forward(x_t, t)."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class HalfSize(nn.Module):
    """Returns a 2x downsampled map instead of one shaped like x_t."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.conv(x)


def not_a_module(in_channels: int = 1) -> str:
    """A factory that returns something other than an nn.Module."""
    return "a string"


def images(n: int, size: int = 8) -> Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(n)) * 2 - 1


def load_unscaled(image_size: int = 8) -> tuple[Tensor, Tensor]:
    """Images in [0, 255]: forgot to scale to [-1, 1]."""
    return (images(16, image_size) + 1) * 127.5, (images(4, image_size) + 1) * 127.5


def load_mixed_sizes() -> tuple[list[Tensor], Tensor]:
    """A list of train images of two sizes."""
    return [images(1)[0], images(1, 16)[0]], images(4)


def load_mismatched() -> tuple[Tensor, Tensor]:
    """Train and held-out images of different sizes."""
    return images(16), images(4, 16)


def load_uint8() -> tuple[Tensor, Tensor]:
    """Integer pixels, not float."""
    return torch.zeros(16, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, 1, 8, 8, dtype=torch.uint8)


def load_three_dims() -> tuple[Tensor, Tensor]:
    """[N, H, W] without the channel dimension."""
    return images(16)[:, 0], images(4)[:, 0]


def load_bad_labels() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float labels, one too few."""
    return images(16), images(4), torch.zeros(15), torch.zeros(4)


def load_a_dict() -> dict[str, Tensor]:
    """A dict instead of a tuple or DataSplit."""
    return {"train": images(16), "test": images(4)}
