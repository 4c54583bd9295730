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


@pytest.mark.slow
def test_a_user_sampler_schedule_and_method_run_end_to_end(compose_cfg) -> None:
    """`sampler._target_`, `diffusion._target_`, `quant._target_` from a test-only package (helpers) through every stage."""
    cfg = to_config(
        compose_cfg(
            "experiment=tiny",
            "sampler._target_=helpers.custom_diffusion.trailing_sample",
            "diffusion._target_=helpers.custom_diffusion.quadratic_betas",
            "quant._target_=helpers.custom_method.round_weights",
            "quant.weight_bits=4",
        )
    )
    results = run_experiment(cfg)
    protocol = results["protocol"]
    assert (protocol["sampler"], protocol["sampler_steps"], protocol["diffusion"]) == (
        "trailing_sample",
        5,
        "quadratic_betas, T=1000",
    )
    assert sorted(map(int, results["traj_eps_mse_per_t"])) == [199, 399, 599, 799, 999]  # the trailing timesteps it visited
    assert results["metrics"]["eval/fid_cls"] >= 0 and results["execution"] == "fakequant"
    assert results["quant"]["_target_"] == "helpers.custom_method.round_weights"
    assert results["metrics"]["eval/eps_rel_err"] > 0  # 4-bit weights: the model did change
