"""Shared fixtures: compose the real conf/ with overrides, tiny settings for fast end-to-end runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffquant.config import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# A model and run small enough for a CLI test on 2 cores (seconds, not minutes).
TINY_OVERRIDES = [
    "model.base_channels=8",
    "model.groups=4",
    "model.channel_mults=[1,2]",
    "dataset.image_size=8",
    "train.steps=20",
    "train.batch_size=32",
    "eval.num_samples=32",
    "eval.batch_size=32",
    "eval.classifier_steps=20",
    "eval.eps_num_images=16",
    "eval.eps_timesteps=4",
    "eval.grid_images=16",
    "sampler.steps=5",
    "quant.calib.num_samples=8",
    "quant.calib.timesteps=5",
    "progress=false",
]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, writing into tmp_path (no Hydra run dir needed)."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                return_hydra_config=True,  # to_config reads the command line from it (explicit vs inherited keys)
            )

    return _compose
