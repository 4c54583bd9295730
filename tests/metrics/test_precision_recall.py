"""Improved precision / recall (Kynkäänniemi et al.) against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from diffquant.metrics.precision_recall import coverage_fraction, knn_radii, precision_recall


def test_knn_radii_on_a_line_match_hand_computed_distances() -> None:
    x = torch.arange(5, dtype=torch.float64).unsqueeze(1)  # points 0, 1, 2, 3, 4
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert knn_radii(x, 2).tolist() == [2.0, 1.0, 1.0, 1.0, 2.0]
    assert knn_radii(x, 4).tolist() == [4.0, 3.0, 2.0, 3.0, 4.0]


def test_identical_sets_give_full_precision_and_recall() -> None:
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_disjoint_far_sets_give_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(100, 8, generator=gen), torch.randn(100, 8, generator=gen) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_mode_dropping_keeps_precision_and_loses_recall() -> None:
    """Generated samples covering only one of two real clusters: precise, but half the recall."""
    gen = torch.Generator().manual_seed(2)
    real = torch.cat([torch.randn(200, 4, generator=gen), torch.randn(200, 4, generator=gen) + 50.0])
    fake = torch.randn(200, 4, generator=gen)
    precision, recall = precision_recall(real, fake, k=5)
    assert precision >= 0.9  # the same distribution as one cluster; tails fall outside by chance
    assert 0.4 < recall <= 0.5  # the far cluster is never covered


def test_coverage_counts_points_on_the_ball_boundary() -> None:
    centres, radii = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0], [0.0, 0.5], [2.0, 0.0], [0.0, -3.0]], dtype=torch.float64)
    assert coverage_fraction(queries, centres, radii) == 0.5


def test_bad_shapes_and_too_few_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not match"):
        precision_recall(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="more than k=3"):
        knn_radii(torch.zeros(3, 2), 3)
