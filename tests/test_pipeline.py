"""run_experiment in process: the typed Config in, the results dict and the run's files out."""

from __future__ import annotations

import json

import pytest

from diffquant.config import to_config
from diffquant.errors import DiffquantError
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


@pytest.mark.heavy  # two in-process runs (about 16 s)
@pytest.mark.slow
def test_a_saved_quantized_model_evaluates_without_requantizing(compose_cfg, tmp_path) -> None:
    """quant.save=true writes quantized.pt; quant.load=<it> gives the same metrics, and refuses another FP32 model."""
    saved = run_experiment(to_config(compose_cfg("experiment=tiny", "quant.save=true", "quant.weight_bits=4")))
    path = tmp_path / "run" / "quantized.pt"
    assert path.stat().st_size > 0
    loaded = run_experiment(
        to_config(compose_cfg("experiment=tiny", f"quant.load={path}", f"paths.output_dir={tmp_path / 'again'}"))
    )
    quality = [k for k in saved["metrics"] if not k.startswith("perf/")]  # timings differ run to run
    assert len(quality) > 10 and {k: loaded["metrics"][k] for k in quality} == {k: saved["metrics"][k] for k in quality}
    assert loaded["metrics"]["perf/quantize_s"] == 0.0
    assert (loaded["quant"]["weight_bits"], loaded["execution"]) == (4, "fakequant")  # the file's recipe, not quant=ptq's 8
    other = to_config(compose_cfg("experiment=tiny", f"quant.load={path}", "seed=5", f"paths.output_dir={tmp_path / 'x'}"))
    with pytest.raises(DiffquantError, match="it was quantized from the FP32 model .* this run's is"):
        run_experiment(other)
    assert not (tmp_path / "x" / "results.json").exists()


@pytest.mark.slow
def test_the_pipeline_imports_neither_torchvision_nor_scikit_learn() -> None:
    """Seconds per process (every CLI run, every sweep job): only the loaders that need them import them."""
    import subprocess
    import sys

    code = "import sys, diffquant.pipeline; print(sorted(m for m in ('torchvision', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
