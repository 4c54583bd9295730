"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from diffquant.components import Component
    from diffquant.config import Config
    from diffquant.quant.calibration import CalibrationData
    from diffquant.quant.plan import QuantContext
    from diffquant.quant.qconfig import QuantSpec

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# The tiny run of CLI tests is the shipped preset itself (conf/experiment/tiny.yaml), not a copy.
TINY_OVERRIDES = ["experiment=tiny"]
SELECTABLE_GROUPS = ("model", "dataset", "quant", "backend", "diffusion", "train", "sampler", "eval", "logger", "paths")


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file of every selectable config group."""
    return [(g, p.stem) for g in SELECTABLE_GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def fp32_key_of(cfg: Config, in_channels: int, image_size: int) -> str:
    """`fp32_key` of the groups of `cfg` it reads (model, dataset, diffusion, train, seed)."""
    from diffquant.cache.artifacts import fp32_key

    return fp32_key(cfg.model, cfg.dataset, cfg.diffusion, cfg.train, cfg.seed, in_channels, image_size)


def fp32_key_parts_of(cfg: Config, in_channels: int, image_size: int) -> dict[str, object]:
    """`fp32_key_parts` of the groups of `cfg` it reads."""
    from diffquant.cache.artifacts import fp32_key_parts

    return fp32_key_parts(cfg.model, cfg.dataset, cfg.diffusion, cfg.train, cfg.seed, in_channels, image_size)


def machine_spec(engine: str = "fbgemm", **fields: object) -> QuantSpec:
    """A QuantSpec on the 8-bit grids the machine's own self-test picks for `engine` (exact int8 kernels here)."""
    from diffquant.quant.engine import resolve_int8_numerics
    from diffquant.quant.qconfig import QuantSpec

    scheme = resolve_int8_numerics(engine, "auto").scheme
    return QuantSpec(reduce_range=scheme.reduce_range, reduce_weight_range=scheme.reduce_weight_range, **fields)


def calibration_context(x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> QuantContext:
    """A QuantContext for PTQ tests: calibration pairs (x, t), no training data, a linear 1000-step schedule."""
    import torch

    from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
    from diffquant.quant.calibration import CalibrationData
    from diffquant.quant.plan import QuantContext

    return QuantContext(
        calibration=lambda: CalibrationData(x, t),
        train_batches=lambda: iter([]),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        generator=generator if generator is not None else torch.Generator(),
        progress=False,
    )


def model_spec(target: str, **kwargs: object) -> Component:
    """A `model` component for `target` with these constructor arguments (the data adds channels and size if taken)."""
    from diffquant.components import Component, import_target, signature_of

    names = signature_of(import_target(target, "model._target_"), target).names
    supplied = tuple(n for n in ("in_channels", "image_size") if n in names)
    return Component("model", target, dict(kwargs), name=target.rsplit(".", 1)[-1], supplied=supplied)


def random_pairs(n: int, shape: tuple[int, int, int], seed: int) -> CalibrationData:
    """`n` calibration pairs: x ~ N(0, 1) of one image `shape` each, t uniform in 0..999, drawn in that order from `seed`."""
    import torch

    from diffquant.quant.calibration import CalibrationData

    g = torch.Generator().manual_seed(seed)
    return CalibrationData(torch.randn((n, *shape), generator=g), torch.randint(0, 1000, (n,), generator=g))
