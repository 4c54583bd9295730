"""A class-conditional tiny run through the CLI: guided calibration pairs, class accuracy with its interval, labelled grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers.cli import diffquant

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("class_cond")
    proc = diffquant(tmp, "model.num_classes=10", "sampler.guidance_scale=3", "quant.calib.num_samples=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Conditional model (10 classes); sampler.guidance_scale=3" in proc.stdout
    return tmp


def test_results_report_class_accuracy_for_both_models_with_a_paired_interval(guided_run: Path) -> None:
    results = json.loads((guided_run / "run" / "results.json").read_text())
    metrics = results["metrics"]
    for key in ("eval/class_accuracy", "eval/class_accuracy_fp32"):
        assert 0.0 <= metrics[key] <= 1.0
    delta = metrics["eval/class_accuracy_delta"]
    assert delta == pytest.approx(metrics["eval/class_accuracy"] - metrics["eval/class_accuracy_fp32"])
    low, high = metrics["eval/class_accuracy_delta_ci95"]
    assert low <= delta <= high
    assert results["perf_context"]["guidance_scale"] == 3.0 and results["perf_context"]["batched_guidance"] is True
    assert "label_embed" not in results["wrapped_layers"]  # the embedding lookup stays float


def test_calibration_pairs_hold_the_requested_classes_and_the_null_half(guided_run: Path) -> None:
    (calib,) = (guided_run / "cache" / "fp32").glob("*/calib_*.pt")
    blob = torch.load(calib, weights_only=True)
    assert blob["guidance_scale"] == 3.0
    steps = blob["x"].shape[0] // 20  # 10 trajectories, each step stored with its label and with the null class
    assert torch.equal(blob["cond"], torch.cat([torch.arange(10), torch.full((10,), 10)]).repeat(steps))
    first = blob["x"][:20]
    assert torch.equal(first[:10], first[10:])


def test_tensorboard_shows_the_grid_labelled_by_class(guided_run: Path) -> None:
    run = guided_run / "run"
    assert (run / "samples_by_class.png").is_file()
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert "figures/samples_by_class" in acc.Tags()["images"]
    assert {"eval/class_accuracy", "eval/class_accuracy_delta_ci95_low"} <= set(acc.Tags()["scalars"])
