"""The paired bootstrap against a straightforward reference: the same indices give the same values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from diffquant.metrics.fid import feature_statistics, frechet_distance, sqrt_psd
from diffquant.metrics.inception_score import inception_score
from diffquant.metrics.paired import (
    PairedSets,
    ResampledFrechet,
    bootstrap_indices,
    indices_digest,
    paired_bootstrap,
    percentile_interval,
)
from diffquant.metrics.precision_recall import precision_recall
from diffquant.metrics.quality import psnr


def paired(n: int, d: int, m: int = 120, seed: int = 0, shift: float = 0.3) -> PairedSets:
    """Real features, FP32 features and a quantized twin of each FP32 row (noise plus a shift), logits, images."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(m, d, generator=gen).relu()
    fp32 = torch.randn(n, d, generator=gen).relu()
    quantized = fp32 + shift * torch.randn(n, d, generator=gen).abs()
    logits = torch.randn(n, 10, generator=gen) * 3
    images = torch.rand(n, 1, 4, 4, generator=gen) * 2 - 1
    return PairedSets(
        ref,
        fp32,
        quantized,
        logits,
        logits + 0.5 * torch.randn(n, 10, generator=gen),
        images,
        images + 0.05 * torch.randn(n, 1, 4, 4, generator=gen),
    )


def reference_replicate(sets: PairedSets, row: np.ndarray, k: int) -> dict[str, float]:
    """Every metric of one replicate recomputed from the resampled rows with the plain metric functions."""
    idx = torch.from_numpy(row)
    mu, sigma = feature_statistics(sets.ref)
    fid = {
        name: frechet_distance(mu, sigma, *feature_statistics(x[idx])) for name, x in (("f", sets.fp32), ("q", sets.quantized))
    }
    (pf, rf), (pq, rq) = precision_recall(sets.ref, sets.fp32[idx], k), precision_recall(sets.ref, sets.quantized[idx], k)
    return {
        "fid": fid["q"] - fid["f"],
        "precision": pq - pf,
        "recall": rq - rf,
        "is": inception_score(sets.q_logits[idx])[0] - inception_score(sets.fp32_logits[idx])[0],
        "psnr": psnr(sets.q_samples[idx], sets.fp32_samples[idx]),
    }


@pytest.mark.parametrize(("n", "d"), [(60, 8), (40, 64)], ids=["covariance-path", "gram-path"])
def test_replicates_match_the_plain_metrics_on_the_same_indices(n: int, d: int) -> None:
    sets = paired(n, d)
    result = paired_bootstrap(sets, k=3, replicates=12, seed=5)
    indices = bootstrap_indices(n, 12, 5)
    # N < D: the plain D x D route adds sqrt(~1e-15) per rounding-level eigenvalue it should drop (~1e-7 each)
    fid_tol = 1e-9 if d < n else 1e-5
    for b, row in enumerate(indices):
        expected = reference_replicate(sets, row, 3)
        assert result.replicates["fid"][b] == pytest.approx(expected["fid"], rel=fid_tol, abs=fid_tol)
        for name in ("precision", "recall", "is", "psnr"):
            assert result.replicates[name][b] == pytest.approx(expected[name], rel=1e-12, abs=1e-12), name
    assert result.indices_sha256 == indices_digest(indices) and result.seed == 5


def test_point_estimates_are_the_metrics_of_the_full_sets() -> None:
    sets = paired(80, 8)
    result = paired_bootstrap(sets, replicates=100, seed=0)
    mu, sigma = feature_statistics(sets.ref)
    fid_f, fid_q = (frechet_distance(mu, sigma, *feature_statistics(x)) for x in (sets.fp32, sets.quantized))
    assert (result.point["fid_fp32"], result.point["fid_quantized"]) == (
        pytest.approx(fid_f, rel=1e-10),
        pytest.approx(fid_q, rel=1e-10),
    )
    assert result.point["fid"] == pytest.approx(fid_q - fid_f, rel=1e-9)
    (pf, rf), (pq, rq) = precision_recall(sets.ref, sets.fp32), precision_recall(sets.ref, sets.quantized)
    assert (result.point["precision"], result.point["recall"]) == (pq - pf, rq - rf)
    assert result.point["is"] == inception_score(sets.q_logits)[0] - inception_score(sets.fp32_logits)[0]
    assert result.point["psnr"] == psnr(sets.q_samples, sets.fp32_samples)


def test_intervals_cover_the_point_estimates() -> None:
    result = paired_bootstrap(paired(400, 8), replicates=400, seed=1)
    for name in ("fid", "precision", "recall", "is", "psnr"):
        low, high = result.ci95[name]
        assert low < result.point[name] < high, (name, low, result.point[name], high)
    assert result.ci95["fid"][0] > 0  # the shifted quantized set is worse than FP32 beyond doubt


def test_intervals_shrink_with_the_number_of_samples() -> None:
    widths = {}
    for n in (100, 800):
        low, high = paired_bootstrap(paired(n, 8, seed=2), replicates=300, seed=3).ci95["fid"]
        widths[n] = high - low
    assert widths[800] < 0.55 * widths[100]  # ~ 1 / sqrt(8) = 0.35 expected


def test_identical_sets_give_zero_deltas_and_zero_width_intervals() -> None:
    sets = paired(50, 8)
    same = PairedSets(
        sets.ref,
        sets.fp32,
        sets.fp32.clone(),
        sets.fp32_logits,
        sets.fp32_logits.clone(),
        sets.fp32_samples,
        sets.fp32_samples.clone(),
    )
    result = paired_bootstrap(same, replicates=200, seed=0)
    for name in ("fid", "precision", "recall", "is"):
        assert result.point[name] == 0.0 and result.ci95[name] == (0.0, 0.0)
        assert not np.any(result.replicates[name])
    assert result.point["psnr"] == math.inf and result.ci95["psnr"] == (math.inf, math.inf)


def test_indices_are_fixed_by_n_b_and_seed() -> None:
    a, b = bootstrap_indices(30, 5, 7), bootstrap_indices(30, 5, 7)
    assert np.array_equal(a, b) and a.shape == (5, 30) and a.min() >= 0 and a.max() < 30
    assert not np.array_equal(a, bootstrap_indices(30, 5, 8))
    assert indices_digest(a) == indices_digest(b) != indices_digest(bootstrap_indices(31, 5, 7))


def test_two_runs_sharing_fp32_compare_pairwise_replicate_by_replicate() -> None:
    """delta_a − delta_b per replicate is FID(q_a[idx]) − FID(q_b[idx]): the FP32 term cancels."""
    a, b = paired(60, 8, shift=0.3), paired(60, 8, shift=0.6)  # same seed: same real and FP32 sets
    ra, rb = paired_bootstrap(a, replicates=10, seed=4), paired_bootstrap(b, replicates=10, seed=4)
    mu, sigma = feature_statistics(a.ref)
    for i, row in enumerate(bootstrap_indices(60, 10, 4)):
        idx = torch.from_numpy(row)
        fid = [frechet_distance(mu, sigma, *feature_statistics(x[idx])) for x in (a.quantized, b.quantized)]
        assert ra.replicates["fid"][i] - rb.replicates["fid"][i] == pytest.approx(fid[0] - fid[1], rel=1e-9)


def test_resampled_frechet_of_all_rows_once_is_frechet_distance() -> None:
    x: Tensor = torch.randn(30, 50, generator=torch.Generator().manual_seed(9))  # N < D: the Gram path
    ref = torch.randn(70, 50, generator=torch.Generator().manual_seed(10))
    mu, sigma = feature_statistics(ref)
    value = ResampledFrechet(mu, sigma, x).values(np.ones((1, 30)))[0]
    assert value == pytest.approx(frechet_distance(mu, sigma, *feature_statistics(x)), rel=1e-7)
    # exactly the Frechet distance with the 50 - 29 zero eigenvalues of the rank-29 product left out
    mu_x, sigma_x = feature_statistics(x)
    root = sqrt_psd(sigma)
    top = np.sort(np.linalg.eigvalsh(root @ sigma_x @ root))[-29:]
    exact = (mu - mu_x) @ (mu - mu_x) + np.trace(sigma) + np.trace(sigma_x) - 2 * np.sqrt(top).sum()
    assert value == pytest.approx(exact, rel=1e-13)


def test_percentile_interval_is_the_central_95_percent() -> None:
    assert percentile_interval(np.arange(1001.0)) == (pytest.approx(25.0), 975.0)
