"""Shared fixtures: compose the real conf/ with overrides, tiny settings for fast end-to-end runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffquant.config import register_configs
from helpers import CONF_DIR


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
