"""Helpers shared by test modules (not fixtures)."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SELECTABLE_GROUPS = ("model", "dataset", "quant", "backend", "diffusion", "train", "sampler", "eval", "logger", "paths")


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file of every selectable config group."""
    return [(g, p.stem) for g in SELECTABLE_GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
