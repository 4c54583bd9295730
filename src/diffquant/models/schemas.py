"""Typed schemas of the built-in model targets: the fields each constructor reads, with their range checks.

A `model` node whose `_target_` is one of these classes' `targets` is validated against that schema
(types by OmegaConf, ranges in `__post_init__`); any other `_target_` against its own signature.
`in_channels` and `image_size` are not fields: the pipeline passes them from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from diffquant.errors import DiffquantError, check_range


@dataclass
class UNetConfig:
    """`diffquant.models.unet.UNet` (conf/model/unet_*.yaml)."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.models.unet.UNet",)
    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    groups: int = 8
    num_classes: int = 0  # > 0: class-conditional, labels 0..num_classes-1 (classifier-free guidance)

    def __post_init__(self) -> None:
        check_range("model.num_classes", self.num_classes, 0)
        check_range("model.base_channels", self.base_channels, 1)
        check_range("model.groups", self.groups, 1)
        check_range("model.num_res_blocks", self.num_res_blocks, 1)
        check_range("model.dropout", self.dropout, 0.0, 1.0)
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise DiffquantError(f"model.channel_mults={list(self.channel_mults)} must be a non-empty list of positive integers")
        if self.base_channels % self.groups:
            raise DiffquantError(f"model.base_channels={self.base_channels} must be divisible by model.groups={self.groups}")


@dataclass
class DiffusersUNetConfig(UNetConfig):
    """`diffquant.models.diffusers_unet.build_diffusers_unet`: a UNet2DModel loaded from `pretrained` or built and trained."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.models.diffusers_unet.build_diffusers_unet",)
    pretrained: Optional[str] = None  # a UNet2DModel folder (or hub id, online): its weights, no FP32 training


@dataclass
class DiTConfig:
    """`diffquant.models.dit.DiT` (conf/model/dit_s.yaml); tokens are patch_size x patch_size pixel patches."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.models.dit.DiT",)
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0  # > 0: class-conditional, labels 0..num_classes-1 (classifier-free guidance)

    def __post_init__(self) -> None:
        check_range("model.num_classes", self.num_classes, 0)
        check_range("model.patch_size", self.patch_size, 1)
        check_range("model.depth", self.depth, 1)
        check_range("model.num_heads", self.num_heads, 1)
        check_range("model.mlp_ratio", self.mlp_ratio, 0.01)
        if self.hidden_size % 4 or self.hidden_size % self.num_heads:
            raise DiffquantError(
                f"model.hidden_size={self.hidden_size} must be divisible by 4 and by model.num_heads={self.num_heads}"
            )


@dataclass
class DiffusersDiTConfig:
    """`diffquant.models.diffusers_cond.build_diffusers_dit`: a class-conditional DiTTransformer2DModel."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.models.diffusers_cond.build_diffusers_dit",)
    pretrained: Optional[str] = None  # a DiTTransformer2DModel folder: its weights, no FP32 training
    patch_size: int = 2
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    num_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("patch_size", "num_layers", "num_attention_heads", "attention_head_dim", "num_classes"):
            check_range(f"model.{name}", getattr(self, name), 1)


@dataclass
class DiffusersCondUNetConfig:
    """`diffquant.models.diffusers_cond.build_diffusers_cond_unet`: a UNet2DConditionModel on `encoder_hidden_states`."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.models.diffusers_cond.build_diffusers_cond_unet",)
    pretrained: Optional[str] = None  # a UNet2DConditionModel folder: its weights, no FP32 training
    conditions: Optional[str] = None  # the pool of conditions [M, L, D]: a tensor file or package.module.function
    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    groups: int = 8

    def __post_init__(self) -> None:
        for name in ("base_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim", "groups"):
            check_range(f"model.{name}", getattr(self, name), 1)
        if len(self.channel_mults) < 2 or min(self.channel_mults) < 1:
            raise DiffquantError(f"model.channel_mults={list(self.channel_mults)} must list at least two positive integers")
        if self.base_channels % self.groups:
            raise DiffquantError(f"model.base_channels={self.base_channels} must be divisible by model.groups={self.groups}")


def model_schemas() -> tuple[type, ...]:
    """The schemas of the built-in model targets."""
    return (UNetConfig, DiffusersUNetConfig, DiTConfig, DiffusersDiTConfig, DiffusersCondUNetConfig)
