"""SSIM of quantized vs FP32 samples: against a loop-by-loop reference of Wang et al. (2004), and its paired interval."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffquant.metrics.paired import PairedSets, paired_bootstrap
from diffquant.metrics.quality import ssim, ssim_per_image


def reference_ssim(a: np.ndarray, b: np.ndarray, data_range: float, size: int, sigma: float = 1.5) -> float:
    """One single-channel image pair: Gaussian-weighted statistics of every valid window, written out."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
            cov = (w * pa * pb).sum() - ma * mb
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_reference_and_shrinks_its_window_to_small_images() -> None:
    g = torch.Generator().manual_seed(0)
    for side, size in ((16, 11), (8, 7)):  # 8x8 digits: the largest odd window that fits is 7
        a = torch.rand(3, 1, side, side, generator=g) * 2 - 1
        b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
        got = ssim_per_image(a, b, data_range=2.0)
        expected = [reference_ssim(a[i, 0].double().numpy(), b[i, 0].double().numpy(), 2.0, size) for i in range(3)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    unrelated = torch.rand(a.shape, generator=g) * 2 - 1
    assert ssim(a, a) == 1.0
    assert abs(ssim(a, unrelated)) < 0.2 < ssim(a, b) < 1


def test_paired_bootstrap_gives_ssim_an_interval_around_its_value() -> None:
    g = torch.Generator().manual_seed(1)
    fp32 = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    q = (fp32 + 0.1 * torch.randn(fp32.shape, generator=g)).clamp(-1, 1)
    feats = torch.randn(64, 4, generator=g)
    result = paired_bootstrap(PairedSets(torch.randn(64, 4, generator=g), feats, feats + 0.01, None, None, fp32, q), 3, 200, 0)
    low, high = result.ci95["ssim"]
    assert low < result.point["ssim"] < high
    assert math.isclose(result.point["ssim"], ssim(q, fp32), rel_tol=1e-12)
    assert len(result.replicates["ssim"]) == 200
