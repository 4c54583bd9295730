"""A DDPM-style UNet (Ho et al., 2020) written so every Conv2d / Linear is a module the quantizer can wrap.

Adds, concatenations, GroupNorm, SiLU and the attention core stay in float: the quantizer wraps each
Conv2d / Linear in quant -> int8 layer -> dequant, which is the fastest eager scheme on CPU engines.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps, [B] -> [B, dim] (Transformer positional encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def class_or_null(y: Tensor | None, num_classes: int, t: Tensor) -> Tensor:
    """The labels y [B], or the null class `num_classes` for every sample when y is None."""
    return torch.full_like(t, num_classes, dtype=torch.long) if y is None else y


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the projected time embedding, twice, with a residual shortcut."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = nn.SiLU()
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.temb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Epsilon-prediction UNet: `forward(x_t, t[, y]) -> ε̂` with x_t [B, C, H, W], integer t [B] and class labels y [B].

    With `num_classes` > 0 the label's embedding is added to the time embedding; y = None or
    y = num_classes is the null class (the unconditional prediction of classifier-free guidance).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (),
        image_size: int = 16,
        dropout: float = 0.0,
        groups: int = 8,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes  # > 0: class-conditional (diffusion/guidance.py reads it)
        self.config = dict(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attn_resolutions=list(attn_resolutions),
            image_size=image_size,
            dropout=dropout,
            groups=groups,
            **({"num_classes": num_classes} if num_classes else {}),
        )
        ch, temb_dim = base_channels, 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        # Class k's embedding is added to the time embedding; row num_classes is the learned null class.
        self.label_embed = nn.Embedding(num_classes + 1, temb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, skip_chs, res = nn.ModuleList(), [ch], image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(self._stage(ch, base_channels * mult, temb_dim, groups, dropout, res in attn_resolutions))
                ch = base_channels * mult
                skip_chs.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, temb_dim, groups, dropout), AttnBlock(ch, groups), ResBlock(ch, ch, temb_dim, groups, dropout)]
        )
        self.up = nn.ModuleList()
        self.splits: dict[str, int] = {}  # layers fed by cat([h, skip]) -> channels of h
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                cin = ch + skip_chs.pop()
                self.splits.update({f"up.{len(self.up)}.0.conv1": ch, f"up.{len(self.up)}.0.shortcut": ch})
                self.up.append(self._stage(cin, base_channels * mult, temb_dim, groups, dropout, res in attn_resolutions))
                ch = base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(groups, ch)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def concat_splits(self) -> dict[str, int]:
        """Layers whose input is a skip concatenation, with the channel index where the skip starts."""
        return dict(self.splits)

    @staticmethod
    def _stage(cin: int, cout: int, temb_dim: int, groups: int, dropout: float, attn: bool) -> nn.ModuleList:
        blocks: list[nn.Module] = [ResBlock(cin, cout, temb_dim, groups, dropout)]
        if attn:
            blocks.append(AttnBlock(cout, groups))
        return nn.ModuleList(blocks)

    @staticmethod
    def _run(stage: nn.Module, h: Tensor, temb: Tensor) -> Tensor:
        if isinstance(stage, nn.ModuleList):
            for block in stage:
                h = block(h, temb) if isinstance(block, ResBlock) else block(h)
            return h
        return stage(h)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        temb = self.time_embed(
            timestep_embedding(
                t, self.conv_in.out_channels if isinstance(self.conv_in, nn.Conv2d) else self.config["base_channels"]
            )
        )
        if self.label_embed is not None:
            temb = temb + self.label_embed(class_or_null(y, self.num_classes, t))
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, temb)
            skips.append(h)
        for block in self.mid:
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
        for stage in self.up:
            if isinstance(stage, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(stage, h, temb)
        return self.conv_out(self.act(self.norm_out(h)))
