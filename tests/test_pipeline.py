"""run_experiment in process: the typed Config in, the results dict and the run's files out."""

from __future__ import annotations

import json

import pytest

from diffquant.config import to_config
from diffquant.pipeline import run_experiment


@pytest.mark.slow
def test_run_experiment_in_process_writes_what_it_returns(compose_cfg, tmp_path) -> None:
    cfg = to_config(compose_cfg("experiment=tiny", "logger.tensorboard=true"))
    results = run_experiment(cfg)
    run = tmp_path / "run"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    metrics = results["metrics"]
    assert metrics["eval/fid_cls"] >= 0 and metrics["eval/fid_cls_fp32"] >= 0
    low, high = metrics["eval/fid_cls_delta_ci95"]
    assert low <= metrics["eval/fid_cls_delta"] <= high
    assert 0.9 < metrics["model/int8_mac_fraction"] <= 1.0
    assert results["execution"] == "int8"
    assert (run / "samples.png").stat().st_size > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
