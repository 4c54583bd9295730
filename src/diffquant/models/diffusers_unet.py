"""A diffusers `UNet2DModel` as an ε-network `forward(x, t) -> Tensor` (the optional `diffusers` extra).

`model.pretrained` names a local folder holding the model's `config.json` and weights (or a pipeline
folder with a `unet/` sub-folder), or a hub id when online; the FP32 stage then uses those weights
as they are (the FP32 cache key is a digest of the loaded weights). Without it, a UNet2DModel is built
from the UNet fields of the `model` group and trained. diffusers is imported only here, when this model is used.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from diffquant.errors import DiffquantError
from diffquant.models.unet import class_or_null

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DiffusersUNet(nn.Module):
    """Wraps a UNet2DModel; its Conv2d / Linear layers are ordinary modules the quantizer can wrap.

    A UNet2DModel with `num_class_embeds` = K + 1 is class-conditional on K classes: the last
    embedding is the null class of classifier-free guidance (`forward(x, t, y)`, y = None: null).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        embeds = getattr(unet.config, "num_class_embeds", None)
        self.num_classes = int(embeds) - 1 if embeds else 0

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if not self.num_classes:
            return self.unet(x, t, return_dict=False)[0]
        return self.unet(x, t, class_labels=class_or_null(y, self.num_classes, t), return_dict=False)[0]


def import_diffusers(factory: str, pretrained: str | None) -> ModuleType:
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        raise DiffquantError(
            f"model._target_=diffquant.models.{factory} (model.pretrained={pretrained!r}) needs the optional extra: pip install -e '.[diffusers]'"
        ) from None


def model_folder(pretrained: str, sub: str = "unet", kind: str = "UNet2DModel") -> Path | None:
    """The local folder holding the model's config.json (`pretrained` itself or its `sub`/); None for a hub id."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        for folder in (path, path / sub):
            if (folder / "config.json").is_file():
                return folder
        raise DiffquantError(
            f"model.pretrained={pretrained!r} holds no config.json (nor {sub}/config.json); "
            f"give a folder written by {kind}.save_pretrained"
        )
    if path.exists() or not HUB_ID.match(pretrained):
        raise DiffquantError(
            f"model.pretrained={pretrained!r} is not a folder; give a folder written by "
            f"{kind}.save_pretrained (or a hub id such as google/ddpm-cifar10-32, online only)"
        )
    return None


def load_folder(cls: Any, pretrained: str, sub: str, kind: str) -> nn.Module:
    """`cls.from_pretrained` of the folder (or hub id); a missing or malformed folder is a one-line DiffquantError."""
    folder = model_folder(pretrained, sub, kind)
    try:
        return cls.from_pretrained(str(folder) if folder is not None else pretrained, low_cpu_mem_usage=False).eval()
    except Exception as exc:  # noqa: BLE001 - diffusers raises OSError, ValueError, JSON and safetensors errors
        detail = " ".join(str(exc).split())[:300]
        where = "the folder" if folder is not None else "no local folder; the hub"
        raise DiffquantError(
            f"model.pretrained={pretrained!r} could not be loaded as a {kind} from {where} ({type(exc).__name__}: {detail})"
        ) from None


def load_pretrained(pretrained: str, in_channels: int, image_size: int) -> DiffusersUNet:
    """`UNet2DModel.from_pretrained` (`low_cpu_mem_usage=True` would need `accelerate`), checked against the data."""
    unet = load_folder(
        import_diffusers("diffusers_unet.build_diffusers_unet", pretrained).UNet2DModel, pretrained, "unet", "UNet2DModel"
    )
    cfg = unet.config
    if cfg.in_channels != in_channels or cfg.out_channels != in_channels:
        raise DiffquantError(
            f"model.pretrained={pretrained!r} has in_channels={cfg.in_channels}, out_channels="
            f"{cfg.out_channels}; set dataset.channels={cfg.in_channels} (it is {in_channels})"
        )
    if cfg.sample_size not in (None, image_size):
        logging.getLogger("diffquant").warning(
            "model.pretrained was trained at sample_size=%s; running it at dataset.image_size=%d", cfg.sample_size, image_size
        )
    return DiffusersUNet(unet)


def build_diffusers_unet(
    in_channels: int,
    image_size: int,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2, 2),
    num_res_blocks: int = 1,
    attn_resolutions: tuple[int, ...] = (),
    dropout: float = 0.0,
    groups: int = 8,
    pretrained: str | None = None,
    num_classes: int = 0,
) -> DiffusersUNet:
    """Load `pretrained`, or build a fresh UNet2DModel with the layout of the UNet fields (attention where listed)."""
    if pretrained:
        return load_pretrained(pretrained, in_channels, image_size)
    diffusers = import_diffusers("diffusers_unet.build_diffusers_unet", pretrained)
    resolutions = [image_size // 2**level for level in range(len(channel_mults))]
    attn = [res in attn_resolutions for res in resolutions]
    kwargs: dict[str, Any] = dict(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(base_channels * m for m in channel_mults),
        layers_per_block=num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=groups,
        dropout=dropout,
        attention_head_dim=None,
        **({"num_class_embeds": num_classes + 1} if num_classes else {}),
    )
    return DiffusersUNet(diffusers.UNet2DModel(**kwargs))
