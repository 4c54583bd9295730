"""evaluation/uncertainty.py: the paired metrics of a run, the real-vs-real floor, bootstrap.json and pairing two runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffquant.evaluation.compare import sample_features, sample_metrics
from diffquant.evaluation.features import FeatureSpace, Reference
from diffquant.evaluation.uncertainty import (
    floor_images,
    floor_metrics,
    paired_difference,
    paired_metrics,
    read_bootstrap,
    write_bootstrap,
)
from diffquant.metrics.fid import feature_statistics, frechet_distance
from diffquant.metrics.paired import bootstrap_indices, indices_digest


def flat_space() -> FeatureSpace:
    """Pixels as features and a fixed linear map of them as logits (no network)."""
    weight = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)).double()
    return FeatureSpace("classifier", lambda x: x.flatten(1).double(), "fixed", lambda x: x.flatten(1).double() @ weight)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def setup() -> tuple[list[FeatureSpace], dict[str, Reference], torch.Tensor, torch.Tensor]:
    space = flat_space()
    fp32 = images(64, 1)
    quantized = fp32 + 0.2 * torch.rand(fp32.shape, generator=torch.Generator().manual_seed(2))  # biased: worse FID
    return [space], {"classifier": Reference.from_features(space.extract(images(200, 3)))}, fp32, quantized


def test_paired_metrics_hold_every_delta_its_interval_and_the_replicates(setup) -> None:
    spaces, refs, fp32, quantized = setup
    features = sample_features(spaces, fp32, quantized)
    metrics, deltas, digest = paired_metrics(spaces, refs, features, fp32, quantized, True, 3, 200, 7)
    plain = sample_metrics(spaces, refs, fp32, quantized, True, 3, features)
    assert metrics["eval/fid_cls_delta"] == pytest.approx(plain["eval/fid_cls"] - plain["eval/fid_cls_fp32"], rel=1e-9)
    for name in ("precision", "recall", "is"):
        assert metrics[f"eval/{name}_cls_delta"] == pytest.approx(plain[f"eval/{name}_cls"] - plain[f"eval/{name}_cls_fp32"])
    for key in ("eval/fid_cls_delta", "eval/precision_cls_delta", "eval/recall_cls_delta", "eval/is_cls_delta"):
        low, high = metrics[f"{key}_ci95"]
        assert low <= high and len(deltas[key]) == 200
        assert (low, high) == pytest.approx(tuple(np.percentile(deltas[key], [2.5, 97.5])))
    assert metrics["eval/fid_cls_delta_ci95"][0] > 0  # the shifted set is worse beyond doubt
    low, high = metrics["eval/psnr_vs_fp32_ci95"]
    assert low < plain["eval/psnr_vs_fp32"] < high
    assert digest == indices_digest(bootstrap_indices(64, 200, 7))


def test_fp32_runs_get_exact_zero_deltas_and_non_finite_samples_none(setup) -> None:
    spaces, refs, fp32, _ = setup
    same = fp32.clone()
    metrics, deltas, _ = paired_metrics(spaces, refs, sample_features(spaces, fp32, same), fp32, same, False, 3, 100, 0)
    assert metrics["eval/fid_cls_delta"] == 0.0 and metrics["eval/fid_cls_delta_ci95"] == [0.0, 0.0]
    assert deltas["eval/fid_cls_delta"] == [0.0] * 100 and metrics["eval/psnr_vs_fp32_ci95"] is None
    bad = fp32.clone()
    bad[0, 0, 0, 0] = float("nan")
    metrics, deltas, _ = paired_metrics(spaces, refs, sample_features(spaces, fp32, bad), fp32, bad, True, 3, 100, 0)
    assert metrics["eval/fid_cls_delta"] is None and metrics["eval/fid_cls_delta_ci95"] is None and deltas == {}


def test_floor_is_real_train_images_against_the_reference(tmp_path: Path, setup) -> None:
    spaces, refs, _, _ = setup
    train = images(300, 4)
    real = floor_images(train, 64, 1234)
    assert real.shape[0] == 64 and torch.equal(real, floor_images(train, 64, 1234))
    assert len({tuple(r.flatten().tolist()) for r in real}) == 64  # without replacement
    assert floor_images(train, 500, 0).shape[0] == 300  # all of them when there are fewer
    floor = floor_metrics(spaces, refs, real, tmp_path, {"dataset": "x"})
    ref = refs["classifier"]
    expected = frechet_distance(ref.mu.numpy(), ref.sigma.numpy(), *feature_statistics(real.flatten(1)))
    assert floor == {"eval/fid_cls_floor": pytest.approx(expected, rel=1e-9)}
    assert len(list((tmp_path / "refstats").glob("classifier-*.pt"))) == 1  # cached with the reference statistics


def test_bootstrap_file_pairs_two_runs_replicate_by_replicate(tmp_path: Path) -> None:
    pairing = {
        "num_samples": 64,
        "replicates": 4,
        "seed": 1,
        "eval_seeds": [1],
        "indices_sha256": "abc",
        "fp32_samples_sha256": "def",
    }
    a, b = tmp_path / "a", tmp_path / "b"
    summary = write_bootstrap(a / "bootstrap.json", {"eval/fid_cls_delta": [1.0, 2.0, 3.0, 4.0]}, pairing)
    write_bootstrap(b / "bootstrap.json", {"eval/fid_cls_delta": [0.5, 0.5, 0.5, 0.5]}, pairing)
    assert summary == {"file": "bootstrap.json", **pairing}
    ra, rb = read_bootstrap(a), read_bootstrap(b)
    mean, low, high = paired_difference(ra, rb, "eval/fid_cls_delta")
    assert mean == 2.0 and (low, high) == pytest.approx((0.575, 3.425))  # percentiles of [0.5, 1.5, 2.5, 3.5]
    assert paired_difference(ra, {**rb, "eval_seeds": [2]}, "eval/fid_cls_delta") is None  # other noise: no pairing
    assert paired_difference(ra, {**rb, "fp32_samples_sha256": "x"}, "eval/fid_cls_delta") is None  # other FP32 term
    assert paired_difference(ra, rb, "eval/fid_inception_delta") is None
    assert read_bootstrap(tmp_path / "missing") is None
