"""Frechet distance against closed forms, scipy's sqrtm and sampled Gaussians."""

import numpy as np
import pytest
import torch

from diffquant.metrics.fid import feature_statistics, fid_from_features, frechet_distance


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_feature_statistics_match_numpy() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, x.double().mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.double().numpy().T), atol=1e-12)
    with pytest.raises(ValueError):
        feature_statistics(torch.zeros(1, 4))


def test_identical_features_give_zero() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    assert abs(fid_from_features(x, x.clone())) < 1e-6
    few = torch.randn(10, 32, generator=torch.Generator().manual_seed(2))  # rank-deficient covariance
    assert abs(fid_from_features(few, few)) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagonal_covariances_match_closed_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 8
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_mean_shift_only() -> None:
    sigma = random_spd(np.random.default_rng(3), 6)
    shift = np.full(6, 0.5)
    assert frechet_distance(np.zeros(6), sigma, shift, sigma) == pytest.approx(6 * 0.25, abs=1e-9)


def test_full_covariances_match_scipy_sqrtm() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(4)
    dim = 10
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_fid_grows_with_mean_shift() -> None:
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(2000, 8, generator=gen, dtype=torch.float64)
    other = torch.randn(2000, 8, generator=gen, dtype=torch.float64)
    fids = [fid_from_features(base, other + shift) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert fids == sorted(fids) and fids[0] < 0.05
    assert fids[-1] == pytest.approx(8 * 2.0**2, rel=0.05)  # ||shift||^2 dominates


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
