"""A user's own model and data set, as a package outside diffquant would write them (diffquant never imports this).

`SkipNet` mixes the layer kinds a hand-written denoiser tends to have: Conv-BatchNorm-ReLU runs
(fusable inside nn.Sequential), a BatchNorm outside any Sequential, a strided-conv downsampler, a
ConvTranspose2d upsampler, residual adds, a skip concatenation, nn.MultiheadAttention and a
sinusoidal timestep embedding. `load_blobs` returns small structured images in [-1, 1] with labels.
The CLI reaches both by `_target_` (tests put this folder on PYTHONPATH).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """[B] integer timesteps -> [B, dim] sine / cosine features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


class SkipNet(nn.Module):
    """ε-network `forward(x_t, t)`: stem, down, residual, attention, transposed-conv up, skip concat, out."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        if image_size % 2:
            raise ValueError(f"image_size={image_size} must be even (one 2x down / up level)")
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.res = ResidualBlock(2 * width)
        self.attn = nn.MultiheadAttention(2 * width, heads, batch_first=True)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.merge = nn.Conv2d(2 * width, width, 3, padding=1)
        self.merge_bn = nn.BatchNorm2d(width)  # outside a Sequential: not fused, runs in float
        self.out = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        temb = self.time(sinusoidal(t, self.width))
        skip = self.stem(x) + temb[:, :, None, None]
        h = self.res(self.down(skip))
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)
        attended, _ = self.attn(seq, seq, seq, need_weights=False)
        h = h + attended.transpose(1, 2).reshape(b, c, hh, ww)
        h = torch.cat([self.up(h), skip], dim=1)
        return self.out(torch.relu(self.merge_bn(self.merge(h))))


def blobs(n: int, image_size: int, channels: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` images of one Gaussian blob each on a dark background; the label is the blob's quadrant (0..3)."""
    centers = torch.rand(n, 2, generator=generator) * (image_size - 1)
    widths = 0.6 + torch.rand(n, 1, 1, generator=generator) * image_size / 6
    grid = torch.arange(image_size, dtype=torch.float32)
    dy = (grid[None, :, None] - centers[:, 0, None, None]) ** 2
    dx = (grid[None, None, :] - centers[:, 1, None, None]) ** 2
    images = torch.exp(-(dx + dy) / (2 * widths**2))  # [n, H, W] in (0, 1]
    labels = (centers[:, 0] >= image_size / 2).long() * 2 + (centers[:, 1] >= image_size / 2).long()
    return (images * 2 - 1).unsqueeze(1).repeat(1, channels, 1, 1), labels


def load_blobs(
    image_size: int = 8, channels: int = 1, num_train: int = 256, num_heldout: int = 64, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, held-out images, train labels, held-out labels): seeded blobs in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    train, train_labels = blobs(num_train, image_size, channels, generator)
    heldout, heldout_labels = blobs(num_heldout, image_size, channels, generator)
    return train, heldout, train_labels, heldout_labels
