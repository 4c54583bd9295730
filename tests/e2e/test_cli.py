"""The real CLI end to end (`python -m diffquant.run`) with tiny overrides, and its error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers.cli import diffquant

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'

METRIC_KEYS = {
    "eval/fid_cls",
    "eval/fid_cls_fp32",
    "eval/psnr_vs_fp32",
    "eval/mse_vs_fp32",
    "eval/eps_rel_err",
    "model/size_bytes",
    "model/size_bytes_fp32",
    "perf/sample_s",
    "perf/sample_s_fp32",
}


def test_ptq_int8_run_writes_results_tensorboard_and_pngs(tmp_path: Path) -> None:
    proc = diffquant(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert (results["method"], results["weight_bits"], results["act_bits"], results["backend"], results["execution"]) == (
        "ptq",
        8,
        8,
        "fbgemm",
        "int8",
    )
    assert METRIC_KEYS <= set(results["metrics"])
    metrics = results["metrics"]
    assert all(math.isfinite(metrics[k]) for k in METRIC_KEYS)
    assert metrics["model/size_bytes"] < metrics["model/size_bytes_fp32"]  # ratio on the default model: test_ptq.py
    # int8 weights with their scales, conv_in / conv_out, biases and norms float32, no serialization overhead
    assert 0.2 * metrics["model/size_bytes_fp32"] < metrics["model/packed_bytes"] < metrics["model/size_bytes"]
    assert 0 < metrics["eval/eps_rel_err"] < 1
    assert {"torch", "diffquant"} <= set(results["versions"])
    assert (run / "samples.png").stat().st_size > 1000 and (run / "eps_rel_err.png").stat().st_size > 1000

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "eval/fid_cls", "eval/eps_rel_err", "eval/eps_rel_err_by_t"} <= set(tags["scalars"])
    assert acc.Scalars("eval/eps_rel_err")[0].value == pytest.approx(metrics["eval/eps_rel_err"], rel=1e-5)
    assert {"samples/real", "samples/fp32", "samples/quantized", "samples/abs_diff_x4"} <= set(tags["images"])
    assert any(t.startswith("weights_quantized/") for t in tags["histograms"])
    assert "Training the FP32 model" in proc.stdout

    second = diffquant(tmp_path, "quant=fp32", run_dir="run2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Reusing the cached FP32 model" in second.stdout and "Training the FP32 model" not in second.stdout
    assert "Reusing the cached feature classifier" in second.stdout
    fp32 = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert fp32["execution"] == "fp32" and fp32["metrics"]["eval/eps_rel_err"] == 0.0
    assert fp32["metrics"]["eval/psnr_vs_fp32"] is None
    assert fp32["metrics"]["eval/fid_cls"] == pytest.approx(metrics["eval/fid_cls_fp32"])


@pytest.mark.parametrize(("quant", "backend"), [("qat", "x86"), ("ptq", "qnnpack")])
def test_other_methods_and_backends_complete(tmp_path: Path, quant: str, backend: str) -> None:
    proc = diffquant(tmp_path, f"quant={quant}", f"backend={backend}", "quant.qat.steps=4", "quant.qat.freeze_observer_step=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["method"], results["backend"], results["execution"]) == (quant, backend, "int8")
    assert all(math.isfinite(v) for k, v in results["metrics"].items() if k in METRIC_KEYS)


@pytest.mark.heavy  # a two-job sweep (about 25 s); the launchers' and Optuna's sweeps are heavy too
def test_multirun_sweep_writes_one_result_per_job(tmp_path: Path) -> None:
    proc = diffquant(tmp_path, "-m", "quant=ptq", "quant.weight_bits=4,8")  # qnnpack: test_other_methods_and_backends
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 2
    seen = {(r["weight_bits"], r["backend"], r["execution"]) for r in (json.loads(p.read_text()) for p in jobs)}
    assert seen == {(4, "fbgemm", "fakequant"), (8, "fbgemm", "int8")}
    assert all(list((p.parent / "tensorboard").glob("events.out.tfevents.*")) for p in jobs)
    assert proc.stdout.count("Training the FP32 model") == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant.weight_bits=12"], "quant.weight_bits=12 is out of range; allowed: 2..8"),
        (["quant=int3"], "Could not find 'quant/int3'"),
        (["backend=tensorrt"], "Could not find 'backend/tensorrt'"),
        (["quant.observer=kmeans"], "quant.observer='kmeans' is not allowed; allowed: minmax, moving_average, histogram"),
        (["dataset=mnist", "dataset.root=/nonexistent/mnist"], "dataset.root='/nonexistent/mnist' does not exist"),
        (["model.checkpoint=/nonexistent.pt"], "model.checkpoint='/nonexistent.pt' does not exist"),
        (["quant.weight_bits=four"], "quant.weight_bits"),
    ],
    ids=["bits-range", "unknown-quant", "unknown-backend", "observer", "dataset-root", "checkpoint", "bits-type"],
)
def test_bad_input_gives_one_clear_message(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = diffquant(tmp_path, *overrides)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = diffquant(tmp_path, f"model.checkpoint={bad}")
    assert proc.returncode == 2
    assert f"model.checkpoint='{bad}' is not a readable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.heavy
def test_every_method_on_every_backend_completes(tmp_path: Path) -> None:
    proc = diffquant(
        tmp_path,
        "-m",
        "quant=fp32,ptq,qat",
        "backend=fbgemm,qnnpack,x86",
        "quant.qat.steps=4",
        "quant.qat.freeze_observer_step=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert {(r["method"], r["backend"]) for r in results} == {
        (m, b) for m in ("fp32", "ptq", "qat") for b in ("fbgemm", "qnnpack", "x86")
    }
    for r in results:
        assert r["execution"] == ("fp32" if r["method"] == "fp32" else "int8")
        assert all(math.isfinite(r["metrics"][k]) for k in METRIC_KEYS - {"eval/psnr_vs_fp32", "eval/mse_vs_fp32"})


@pytest.mark.heavy  # three tiny CLI runs (about 22 s): the README command stays under 10 min
def test_runs_are_deterministic_and_a_truncated_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    first = diffquant(tmp_path, "quant.weight_bits=4", run_dir="a")
    assert first.returncode == 0, first.stderr[-3000:]
    entry = next((tmp_path / "cache" / "fp32").glob("*/model.pt"))
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # a write cut short
    second = diffquant(tmp_path, "quant.weight_bits=4", run_dir="b")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is unreadable" in second.stdout and "Training the FP32 model" in second.stdout
    assert entry.read_bytes() == good  # retrained bit for bit, from the same seed
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    timing = {k for k in a["metrics"] if k.startswith("perf/")}
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == {
        k: v for k, v in b["metrics"].items() if k not in timing
    }
    prov = a["provenance"]
    assert (
        prov["fp32_checkpoint_sha256"] == b["provenance"]["fp32_checkpoint_sha256"] and len(prov["fp32_checkpoint_sha256"]) == 64
    )
    assert prov["config_hash"] != b["provenance"]["config_hash"]  # the run dirs differ
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"]) == 40
