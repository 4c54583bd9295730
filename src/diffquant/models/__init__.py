"""Model factory for the architectures in `conf/model/`: which fields of the `model` group each one reads.

The `model` group is one flat schema (`config.ModelConfig`); `model_kwargs(arch, fields)` keeps the
fields an architecture uses, so its cache key and checkpoint depend on those and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from diffquant.errors import DiffquantError, check_choice
from diffquant.models.dit import DiT
from diffquant.models.unet import UNet

UNET_FIELDS = ("base_channels", "channel_mults", "num_res_blocks", "attn_resolutions", "dropout", "groups")
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "unet": UNET_FIELDS,
    "dit": ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio"),
    # A diffusers UNet2DModel: loaded from `pretrained`, or built from the UNet fields and trained.
    "diffusers": (*UNET_FIELDS, "pretrained"),
}
ARCHS = tuple(ARCH_FIELDS)


def model_kwargs(arch: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The build kwargs of `arch` taken from the `model` group's fields (lists become tuples)."""
    check_choice("model.arch", arch, ARCHS)
    return {k: tuple(fields[k]) if isinstance(fields[k], list) else fields[k] for k in ARCH_FIELDS[arch]}


def build_model(arch: str, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Construct an ε-prediction network `forward(x_t, t) -> ε̂`; kwargs are the architecture's own fields."""
    check_choice("model.arch", arch, ARCHS)
    if arch == "dit":
        if image_size % kwargs.get("patch_size", 2):
            raise DiffquantError(f"model.patch_size={kwargs['patch_size']} does not divide dataset.image_size={image_size}")
        return DiT(in_channels=in_channels, image_size=image_size, **kwargs)
    if arch == "diffusers":
        from diffquant.models.diffusers_unet import build_diffusers_unet  # the optional extra, imported on use

        return build_diffusers_unet(in_channels=in_channels, image_size=image_size, **kwargs)
    return UNet(in_channels=in_channels, image_size=image_size, **kwargs)
