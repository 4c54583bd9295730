"""Evaluation of conditional models: the conditions samples ask for, and class accuracy with a paired interval.

Sample i of every seed asks for class i mod K (balanced classes; identical for the FP32 and the
quantized model, so rows stay paired); an embedding-conditioned model for its pool row i mod M. `eval/class_accuracy` is the share of samples the feature
classifier assigns to the class they were asked for. Its delta (quantized − FP32) gets a 95 %
percentile interval from the same paired bootstrap indices as the FID delta (metrics/paired.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from diffquant.diffusion.guidance import Guide
from diffquant.metrics.classifier import predicted_classes
from diffquant.metrics.paired import bootstrap_indices, percentile_interval


def requested_labels(guide: Guide, seeds: int, num_samples: int) -> Tensor:
    """The label each evaluation sample asks for: per seed, `guide.requested_labels(num_samples)`, seeds concatenated."""
    return torch.cat([guide.requested_labels(num_samples) for _ in range(seeds)])


def class_accuracy_metrics(
    classifier: nn.Module, fp32: Tensor, quantized: Tensor, labels: Tensor, replicates: int, seed: int
) -> dict[str, float | list[float] | None]:
    """`eval/class_accuracy` (quantized), `_fp32`, `_delta` and its paired 95 % interval `_delta_ci95`."""
    keys = ("eval/class_accuracy", "eval/class_accuracy_fp32", "eval/class_accuracy_delta", "eval/class_accuracy_delta_ci95")
    correct = {}
    for name, samples in (("fp32", fp32), ("quantized", quantized)):
        if not bool(torch.isfinite(samples).all()):
            return dict.fromkeys(keys)
        correct[name] = (predicted_classes(classifier, samples) == labels).double().numpy()
    q, f = correct["quantized"], correct["fp32"]
    indices = bootstrap_indices(len(labels), replicates, seed)
    deltas = q[indices].mean(axis=1) - f[indices].mean(axis=1)
    low, high = percentile_interval(np.asarray(deltas))
    return dict(zip(keys, (float(q.mean()), float(f.mean()), float(q.mean() - f.mean()), [low, high])))
