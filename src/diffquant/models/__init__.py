"""Model factory: `build_model(arch, ...)` for the architectures in `conf/model/`."""
from __future__ import annotations

from torch import nn

from diffquant.errors import DiffquantError
from diffquant.models.unet import UNet


def build_model(arch: str, in_channels: int, image_size: int, **kwargs: object) -> nn.Module:
    """Construct an ε-prediction network; kwargs are the architecture's own fields."""
    if arch != "unet":
        raise DiffquantError(f"model.arch={arch!r} is not known; allowed: unet")
    return UNet(in_channels=in_channels, image_size=image_size, **kwargs)  # type: ignore[arg-type]
