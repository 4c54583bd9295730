"""FID of a known distribution shift: grows monotonically and matches the Gaussian closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffquant.metrics.fid import fid_from_features, frechet_distance

SHIFTS = (0.0, 0.25, 0.5, 1.0, 2.0)
DIM = 6


def shifted_gaussian_fid(delta: float, sigma: np.ndarray, direction: np.ndarray) -> float:
    """Closed form for N(0, Σ) vs N(δ·u, c²Σ) with c = 1 + δ/2: ‖δu‖² + tr(Σ)(1 − c)²."""
    return float(delta**2 * direction @ direction + np.trace(sigma) * (delta / 2) ** 2)


@pytest.fixture
def gaussian() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((DIM, DIM))
    return a @ a.T / DIM + 0.2 * np.eye(DIM), rng.standard_normal(DIM) / np.sqrt(DIM)


def test_exact_statistics_match_the_closed_form(gaussian) -> None:
    sigma, u = gaussian
    for delta in SHIFTS:
        c = 1 + delta / 2
        value = frechet_distance(np.zeros(DIM), sigma, delta * u, c**2 * sigma)
        assert value == pytest.approx(shifted_gaussian_fid(delta, sigma, u), rel=1e-9, abs=1e-9)


def test_sampled_features_grow_monotonically_and_track_the_closed_form(gaussian) -> None:
    sigma, u = gaussian
    gen = torch.Generator().manual_seed(1)
    chol = torch.from_numpy(np.linalg.cholesky(sigma))
    real = torch.randn(20000, DIM, generator=gen, dtype=torch.float64) @ chol.T
    base = torch.randn(20000, DIM, generator=gen, dtype=torch.float64) @ chol.T
    fids = []
    for delta in SHIFTS:
        fake = (1 + delta / 2) * base + delta * torch.from_numpy(u)
        fids.append(fid_from_features(fake, real))
        expected = shifted_gaussian_fid(delta, sigma, u)
        assert fids[-1] == pytest.approx(expected, abs=0.01 + 0.03 * expected)  # sampling error of 20k draws
    assert all(a < b for a, b in zip(fids, fids[1:]))
    assert fids[0] < 0.01
