"""Conditional diffusers models as ε-networks (the optional `diffusers` extra).

- `build_diffusers_dit`: a `DiTTransformer2DModel` (class-conditional, adaLN-Zero), `forward(x, t, y)`.
  Its label table has a row past the classes (diffusers' classifier-free-guidance row): the null class.
  Learned-σ models (out_channels = 2 C) give their ε half.
- `build_diffusers_cond_unet`: a `UNet2DConditionModel` conditioned on `encoder_hidden_states`,
  `forward(x, t, c)` with c [B, L, D]. `conditions` names its pool of conditions [M, L, D]: a tensor
  file (torch.save / safetensors) or a function returning the tensor (`package.module.fn`), so no text
  encoder is needed; label k stands for row k mod M (diffusion/guidance.py). The null condition is zeros.

Either loads `pretrained` (a `save_pretrained` folder, or a pipeline folder with `transformer/` or
`unet/`) or builds a small model from the fields and trains it. diffusers is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.components import import_target
from diffquant.errors import DiffquantError
from diffquant.models.diffusers_unet import import_diffusers, load_folder
from diffquant.models.unet import class_or_null


class DiffusersDiT(nn.Module):
    """A DiTTransformer2DModel as `forward(x_t, t, y=None) -> ε` (y = None: the null class)."""

    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit
        self.num_classes = int(dit.config.num_embeds_ada_norm)
        self.channels = int(dit.config.in_channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.dit(x, timestep=t, class_labels=class_or_null(y, self.num_classes, t), return_dict=False)[0]
        return out[:, : self.channels]  # learned σ: the first C channels are ε


def build_diffusers_dit(
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    patch_size: int = 2,
    num_layers: int = 4,
    num_attention_heads: int = 4,
    attention_head_dim: int = 32,
    num_classes: int = 10,
) -> DiffusersDiT:
    """Load `pretrained`, or build a DiTTransformer2DModel of `num_layers` blocks of width heads x head_dim."""
    diffusers = import_diffusers("diffusers_cond.build_diffusers_dit", pretrained)
    if pretrained:
        dit = load_folder(diffusers.DiTTransformer2DModel, pretrained, "transformer", "DiTTransformer2DModel")
        if dit.config.in_channels != in_channels:
            raise DiffquantError(
                f"model.pretrained={pretrained!r} has in_channels={dit.config.in_channels}; set dataset.channels={dit.config.in_channels}"
            )
        return DiffusersDiT(dit)
    if image_size % patch_size:
        raise DiffquantError(f"model.patch_size={patch_size} must divide dataset.image_size={image_size}")
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=in_channels,
        out_channels=in_channels,
        num_layers=num_layers,
        sample_size=image_size,
        patch_size=patch_size,
        num_embeds_ada_norm=num_classes,
    )
    return DiffusersDiT(dit)


def read_conditions(conditions: str | None) -> Tensor:
    """The pool [M, L, D] from a tensor file or a function's import path (`model.conditions`)."""
    if not conditions:
        raise DiffquantError(
            "model.conditions is required for model=diffusers_cond_unet: a tensor file [M, L, D] (torch.save or "
            "safetensors) or package.module.function returning one"
        )
    path = Path(conditions).expanduser()
    if path.is_file():
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                (pool,) = load_file(str(path)).values()
            else:
                pool = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
            raise DiffquantError(f"model.conditions={conditions}: not a readable tensor file ({type(exc).__name__})") from None
    else:
        pool = import_target(conditions, "model.conditions")()
    if not isinstance(pool, Tensor) or pool.ndim != 3 or not pool.is_floating_point() or not pool.shape[0]:
        got = f"shape {tuple(pool.shape)} {pool.dtype}" if isinstance(pool, Tensor) else type(pool).__name__
        raise DiffquantError(f"model.conditions={conditions} gave {got}; expected a float tensor [M, L, D] (M conditions)")
    return pool.float().contiguous()


class DiffusersCondUNet(nn.Module):
    """A UNet2DConditionModel as `forward(x_t, t, c=None) -> ε`, c [B, L, D] (None: the null condition, zeros)."""

    def __init__(self, unet: nn.Module, pool: Tensor) -> None:
        super().__init__()
        self.unet = unet
        dim = int(unet.config.cross_attention_dim)
        if pool.shape[-1] != dim:
            raise DiffquantError(
                f"model.conditions holds {pool.shape[-1]}-wide embeddings; the UNet's cross_attention_dim is {dim}"
            )
        self.cond_shape = tuple(pool.shape[1:])
        self.register_buffer("cond_pool", pool)  # in the state_dict: a pretrained model's cache key covers its pool

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            c = torch.zeros(x.shape[0], *self.cond_shape, device=x.device)
        return self.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]


def build_diffusers_cond_unet(
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    conditions: str | None = None,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    layers_per_block: int = 1,
    cross_attention_dim: int = 64,
    attention_head_dim: int = 8,
    groups: int = 8,
) -> DiffusersCondUNet:
    """Load `pretrained`, or build a UNet2DConditionModel with cross-attention at every level but the deepest."""
    pool = read_conditions(conditions)
    diffusers = import_diffusers("diffusers_cond.build_diffusers_cond_unet", pretrained)
    if pretrained:
        unet = load_folder(diffusers.UNet2DConditionModel, pretrained, "unet", "UNet2DConditionModel")
        return DiffusersCondUNet(unet, pool)
    levels = len(channel_mults)
    kwargs: dict[str, Any] = dict(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(base_channels * m for m in channel_mults),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=groups,
    )
    return DiffusersCondUNet(diffusers.UNet2DConditionModel(**kwargs), pool)
