"""Named grids (conf/sweep), experiment presets (conf/experiment), the Slurm launcher preset and multirun.sh."""

from __future__ import annotations

import math
import os
import subprocess
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from diffquant.config import register_configs, to_config
from helpers import CONF_DIR

REPO = CONF_DIR.parent
GRID_SIZES = {"bits": 8, "qconfig": 12, "methods": 6, "backends": 6}


def compose_hydra(*overrides: str) -> DictConfig:
    """The composed config with its `hydra` node (sweeper, launcher, mode)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def grid_size(params: dict[str, str]) -> int:
    """Jobs of a basic-sweeper grid: the product of the comma-separated value counts."""
    return math.prod(len(str(v).split(",")) for v in params.values())


@pytest.mark.parametrize("name", sorted(GRID_SIZES))
def test_named_grids_are_multiruns_of_the_documented_size(name: str) -> None:
    cfg = compose_hydra(f"sweep={name}")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert grid_size(params) == GRID_SIZES[name]
    assert params["quant"] in ("ptq", "ptq,qat")


def test_every_sweep_preset_is_tested() -> None:
    assert {p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")} == {*GRID_SIZES, "optuna"}


def test_optuna_preset_searches_qconfig_knobs_under_a_size_budget(compose_cfg) -> None:
    cfg = compose_hydra("sweep=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed == 0
    assert set(sweeper.params) >= {"quant.weight_bits", "quant.act_bits", "quant.granularity", "quant.observer"}
    assert to_config(compose_cfg("sweep=optuna")).sweep.size_budget_bytes == 750_000


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() if key != "defaults" for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiments_validate_and_set_only_what_differs(compose_cfg, name: str) -> None:
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml"))
    group_overrides = [f"{k.split('/')[-1]}={v}" for d in raw.get("defaults", []) for k, v in d.items()]
    base = compose_cfg(*group_overrides)
    cfg = compose_cfg(f"experiment={name}")
    to_config(cfg)
    for key, value in _leaves(raw).items():
        assert OmegaConf.select(cfg, key) == value
        assert OmegaConf.select(base, key) != value, f"experiment={name} sets {key} to its default"


def test_slurm_launcher_preset_documents_its_knobs() -> None:
    launcher = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=cpu").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node) == ("cpu", 60, 8, 0)
    text = (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").read_text()
    assert all(
        f"{knob}:" in text
        for knob in ("timeout_min", "cpus_per_task", "mem_gb", "partition", "array_parallelism", "setup", "additional_parameters")
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "-m quant=ptq quant.weight_bits=4,6,8 backend=fbgemm,qnnpack"),
        (["bits", "backend=x86"], "-m sweep=bits hydra/launcher=joblib hydra.launcher.n_jobs=3 backend=x86"),
        (["qconfig", "hydra/launcher=slurm"], "-m sweep=qconfig hydra/launcher=slurm"),
        (["quant=qat", "quant.weight_bits=4,8"], "-m quant=qat quant.weight_bits=4,8"),
    ],
    ids=["no-args", "named-grid", "named-grid-slurm", "free-grid"],
)
def test_multirun_sh_arguments(args: list[str], expected: str) -> None:
    env = {**os.environ, "DIFFQUANT": "echo", "N_JOBS": "3"}
    proc = subprocess.run([str(REPO / "multirun.sh"), *args], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
