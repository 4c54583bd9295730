"""Class accuracy of conditional samples: the point values, the paired interval, and the requested classes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from diffquant.diffusion.guidance import Guide
from diffquant.evaluation.conditional import class_accuracy_metrics, requested_labels
from diffquant.metrics.paired import bootstrap_indices


class MeanClassifier(nn.Module):
    """Predicts class round(mean pixel * 10): images made of one value are classified exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        cls = (x.mean(dim=(1, 2, 3)) * 10).round().long().clamp(0, 9)
        return nn.functional.one_hot(cls, 10).float()


def images_of(classes: Tensor) -> Tensor:
    return (classes.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()


def test_class_accuracy_and_its_paired_interval() -> None:
    labels = torch.arange(200) % 10
    fp32_classes = labels.clone()
    fp32_classes[:20] = (labels[:20] + 1) % 10  # FP32: 180 of 200 right
    q_classes = labels.clone()
    q_classes[:50] = (labels[:50] + 1) % 10  # quantized: 150 right, wrong on a superset of FP32's rows
    metrics = class_accuracy_metrics(MeanClassifier(), images_of(fp32_classes), images_of(q_classes), labels, 500, 7)
    assert metrics["eval/class_accuracy_fp32"] == 0.9 and metrics["eval/class_accuracy"] == 0.75
    assert abs(metrics["eval/class_accuracy_delta"] + 0.15) < 1e-12
    low, high = metrics["eval/class_accuracy_delta_ci95"]
    correct_f, correct_q = (fp32_classes == labels).double().numpy(), (q_classes == labels).double().numpy()
    idx = bootstrap_indices(200, 500, 7)  # the same replicates as the FID delta's
    reps = correct_q[idx].mean(axis=1) - correct_f[idx].mean(axis=1)
    assert (low, high) == tuple(np.percentile(reps, [2.5, 97.5]))
    assert low < -0.15 < high < 0  # paired: the 30 extra errors are a clear loss


def test_identical_sets_have_a_zero_width_interval_and_non_finite_samples_none() -> None:
    labels = torch.arange(50) % 10
    images = images_of(labels)
    metrics = class_accuracy_metrics(MeanClassifier(), images, images.clone(), labels, 200, 0)
    assert metrics["eval/class_accuracy"] == 1.0 and metrics["eval/class_accuracy_delta_ci95"] == [0.0, 0.0]
    broken = images.clone()
    broken[3] = float("nan")
    assert set(class_accuracy_metrics(MeanClassifier(), images, broken, labels, 200, 0).values()) == {None}


def test_every_seed_asks_for_the_classes_in_turn() -> None:
    guide = Guide(torch.tensor(3), 2.0, 3)
    labels = requested_labels(guide, seeds=2, num_samples=4)
    assert torch.equal(labels, torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])) and torch.equal(guide.from_labels(labels), labels)
    pool = torch.randn(3, 2, 5)
    embedded = Guide(torch.zeros(2, 5), pool=pool)
    labels = requested_labels(embedded, seeds=1, num_samples=4)
    assert torch.equal(embedded.from_labels(labels), pool[[0, 1, 2, 0]])
