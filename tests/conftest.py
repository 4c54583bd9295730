"""Shared fixtures: compose the real conf/ with overrides, tiny settings for fast end-to-end runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffquant.config import register_configs
from helpers import CONF_DIR

HEAVY = (
    "heavy tier (AOT / Inductor compiles, Inception FID, real launchers, multi-process runs): "
    "run with `python -m pytest --heavy -m heavy`; .ci/run does"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--heavy", action="store_true", help="run the tests marked heavy too (.ci/run does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heavy tests are skipped, with the reason shown, unless --heavy is given."""
    if config.getoption("--heavy"):
        return
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=HEAVY))


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
