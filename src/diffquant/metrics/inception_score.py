"""Inception Score (Salimans et al., 2016) from class probabilities of any classifier.

IS = exp(E_x KL(p(y|x) || p(y))): 1 when every prediction is the marginal (no confident classes),
the number of classes C when predictions are one-hot and spread evenly over the classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inception_score_from_probs(probs: Tensor, splits: int = 1, eps: float = 1e-12) -> tuple[float, float]:
    """(mean, std) of IS over `splits` equal parts of probs [N, C] (rows sum to 1)."""
    p = probs.detach().cpu().double()
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"need probs [N >= splits, C] and splits >= 1, got {tuple(p.shape)} and {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * ((part + eps).log() - (marginal + eps).log())).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    values = torch.tensor(scores, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: Tensor, splits: int = 1) -> tuple[float, float]:
    """(mean, std) of IS from logits [N, C]."""
    return inception_score_from_probs(torch.softmax(logits.double(), dim=1), splits)
