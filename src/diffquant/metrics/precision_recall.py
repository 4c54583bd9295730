"""Improved precision and recall (Kynkäänniemi et al., 2019) from k-NN balls in a feature space.

Precision: the fraction of generated samples that fall inside the k-NN ball of some real sample
(quality). Recall: the fraction of real samples inside the k-NN ball of some generated sample
(coverage). A ball's radius is the distance to the k-th nearest neighbour within the same set.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_distances(a: Tensor, b: Tensor, chunk: int = 1024) -> Tensor:
    """Euclidean distances [N, M] in float64, computed in row chunks."""
    return torch.cat([torch.cdist(a[i : i + chunk], b) for i in range(0, a.shape[0], chunk)])


def knn_radii(features: Tensor, k: int) -> Tensor:
    """Distance of each row to its k-th nearest neighbour in the same set (itself excluded)."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {features.shape[0]}")
    x = features.double()
    # Index 0 of each sorted row is the point itself (distance 0), so the k-th neighbour is index k.
    return pairwise_distances(x, x).kthvalue(k + 1, dim=1).values


def coverage_fraction(queries: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of queries inside at least one ball (centre, radius)."""
    dist = pairwise_distances(queries.double(), centres.double())
    return float((dist <= radii.unsqueeze(0)).any(dim=1).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` [N, D] against real features `real` [M, D]."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(real.shape)} vs {tuple(fake.shape)}")
    precision = coverage_fraction(fake, real, knn_radii(real, k))
    recall = coverage_fraction(real, fake, knn_radii(fake, k))
    return precision, recall
