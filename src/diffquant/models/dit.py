"""A Diffusion Transformer (Peebles & Xie, 2023) on pixel patches, with adaLN-Zero conditioning on t.

Every projection (patch embedding, qkv, attention output, MLP, adaLN modulation, final layer) is an
nn.Conv2d / nn.Linear, so the quantizer wraps each one; LayerNorm, GELU, softmax and the
modulation arithmetic stay in float. With `num_classes` > 0 a class embedding (row `num_classes`:
the learned null class of classifier-free guidance) is added to the time embedding, as in DiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffquant.models.unet import class_or_null, timestep_embedding

FREQ_DIM = 256  # width of the sinusoidal timestep features, as in DiT


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding [grid * grid, dim] (half the channels per axis, MAE / DiT)."""
    if dim % 4:
        raise ValueError(f"the position embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))

    def axis(pos: Tensor) -> Tensor:
        args = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with per-sample shift / scale [B, D] broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with nn.Linear projections (quantizable); the softmax core runs in float."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block; the time embedding regresses shift, scale and gate of both branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a Linear to patch_size² · channels values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """ε-prediction DiT: `forward(x_t, t[, y]) -> ε̂`, x_t [B, C, H, W] with H = W divisible by patch_size, labels y [B]."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by 4")
        self.config = dict(
            in_channels=in_channels,
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            **({"num_classes": num_classes} if num_classes else {}),
        )
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(hidden_size, self.grid)[None], persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(FREQ_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.label_embed = nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: Xavier-uniform Linears, N(0, 0.02) time MLP, and adaLN-Zero (modulation and output at 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        for block in [*self.blocks, self.final]:  # every block starts as the identity, the output as zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens [B, grid², p² · C] -> images [B, C, grid · p, grid · p]."""
        b, p, g = x.shape[0], self.patch_size, self.grid
        x = x.reshape(b, g, g, p, p, -1)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, -1, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, grid², D]
        c = self.time_embed(timestep_embedding(t, FREQ_DIM))
        if self.label_embed is not None:
            c = c + self.label_embed(class_or_null(y, self.num_classes, t))
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))
