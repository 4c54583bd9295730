"""Feature spaces, the reference-statistics cache, and the sample metrics computed in them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.evaluation.compare import sample_metrics
from diffquant.evaluation.features import (
    FeatureSpace,
    Reference,
    build_spaces,
    classifier_space,
    reference_path,
    reference_statistics,
    require_extractor,
    state_fingerprint,
)
from diffquant.metrics.classifier import DigitClassifier
from diffquant.metrics.fid import feature_statistics


@pytest.fixture
def classifier() -> DigitClassifier:
    torch.manual_seed(0)
    return DigitClassifier(in_channels=1, num_classes=10, image_size=8).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def counting_space(calls: list[int]) -> FeatureSpace:
    def extract(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.flatten(1).double()

    return FeatureSpace("classifier", extract, "fixed")


def test_reference_statistics_are_cached_per_data_and_extractor(tmp_path: Path, images) -> None:
    calls: list[int] = []
    space = counting_space(calls)
    ref, cached = reference_statistics(space, images, tmp_path, {"dataset": "x"})
    assert (cached, calls) == (False, [64])
    mu, sigma = feature_statistics(images.flatten(1))
    assert torch.allclose(ref.mu, torch.from_numpy(mu)) and torch.allclose(ref.sigma, torch.from_numpy(sigma))
    again, cached = reference_statistics(space, images, tmp_path, {"dataset": "x"})
    assert cached and calls == [64] and torch.equal(again.sigma, ref.sigma) and torch.equal(again.features, ref.features)
    path = reference_path(tmp_path, space, {"dataset": "x"}, images)
    assert path.parent == tmp_path / "refstats" and path.name.startswith("classifier-")
    other_weights = FeatureSpace("classifier", space.extract, "other")
    assert reference_path(tmp_path, other_weights, {"dataset": "x"}, images) != path
    assert reference_path(tmp_path, space, {"dataset": "y"}, images) != path
    assert reference_path(tmp_path, space, {"dataset": "x"}, images[:32]) != path
    path.write_bytes(b"corrupt")
    _, cached = reference_statistics(space, images, tmp_path, {"dataset": "x"})
    assert not cached and calls == [64, 64]


def test_classifier_fingerprint_follows_the_weights(classifier) -> None:
    before = state_fingerprint(classifier)
    assert classifier_space(classifier).fingerprint == before
    with torch.no_grad():
        classifier.head.bias.add_(1.0)
    assert state_fingerprint(classifier) != before


def test_identical_sample_sets_give_zero_fid_and_full_precision_recall(classifier, images) -> None:
    space = classifier_space(classifier)
    ref = Reference.from_features(space.extract(images))
    metrics = sample_metrics([space], {"classifier": ref}, images.clone(), images.clone(), compare=True, k=3)
    assert metrics["eval/fid_cls"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval/fid_cls_fp32"] == pytest.approx(0.0, abs=1e-6)
    assert (metrics["eval/precision_cls"], metrics["eval/recall_cls"]) == (1.0, 1.0)
    assert metrics["eval/is_cls"] == pytest.approx(metrics["eval/is_cls_fp32"]) and metrics["eval/is_cls"] >= 1.0
    assert metrics["eval/psnr_vs_fp32"] is None and metrics["eval/mse_vs_fp32"] == 0.0  # inf PSNR reported as null


def test_non_finite_samples_give_null_metrics(classifier, images) -> None:
    space = classifier_space(classifier)
    ref = Reference.from_features(space.extract(images))
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    metrics = sample_metrics([space], {"classifier": ref}, images, bad, compare=True)
    assert all(
        metrics[k] is None for k in ("eval/fid_cls", "eval/precision_cls", "eval/recall_cls", "eval/is_cls", "eval/psnr_vs_fp32")
    )
    assert metrics["eval/fid_cls_fp32"] is not None


def test_extractor_choice_is_validated(classifier) -> None:
    with pytest.raises(DiffquantError, match="eval.fid.extractor='fancy' is not allowed; allowed: classifier, inception"):
        require_extractor("fancy")
    spaces = build_spaces("classifier", classifier, batch_size=8, progress=False)
    assert [s.name for s in spaces] == ["classifier"] and spaces[0].short == "cls"
