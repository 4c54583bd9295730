"""Inception Score against its closed forms: 1 for uninformative predictions, C for confident and diverse ones."""

from __future__ import annotations

import math

import pytest
import torch

from diffquant.metrics.inception_score import inception_score, inception_score_from_probs


@pytest.mark.parametrize("classes", [2, 10, 37])
def test_uniform_predictions_score_one(classes: int) -> None:
    mean, std = inception_score_from_probs(torch.full((60, classes), 1.0 / classes))
    assert mean == pytest.approx(1.0, abs=1e-9) and std == 0.0


@pytest.mark.parametrize("classes", [2, 10, 37])
def test_one_hot_predictions_spread_evenly_score_the_number_of_classes(classes: int) -> None:
    probs = torch.eye(classes).repeat(3, 1)  # every class predicted with certainty, equally often
    assert inception_score_from_probs(probs)[0] == pytest.approx(classes, rel=1e-9)


def test_one_hot_on_a_single_class_scores_one() -> None:
    probs = torch.zeros(50, 10)
    probs[:, 3] = 1.0
    assert inception_score_from_probs(probs)[0] == pytest.approx(1.0, abs=1e-9)


def test_two_of_four_classes_score_two_and_logits_agree() -> None:
    probs = torch.zeros(40, 4)
    probs[:20, 0], probs[20:, 1] = 1.0, 1.0
    assert inception_score_from_probs(probs)[0] == pytest.approx(2.0, rel=1e-9)
    logits = torch.log(probs.double() * (1 - 1e-9) + 1e-9 / 4)
    assert inception_score(logits)[0] == pytest.approx(2.0, rel=1e-6)


def test_splits_average_per_split_scores() -> None:
    """First half confident over 5 classes (IS 5), second half uniform (IS 1): two splits give mean 3, std 2."""
    confident, uniform = torch.eye(5).repeat(4, 1), torch.full((20, 5), 0.2)
    mean, std = inception_score_from_probs(torch.cat([confident, uniform]), splits=2)
    assert (mean, std) == (pytest.approx(3.0), pytest.approx(2.0))
    assert math.isclose(inception_score_from_probs(confident)[0], 5.0, rel_tol=1e-9)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(torch.full((3, 2), 0.5), splits=4)
