"""evaluation.py: the noise-prediction error, overall and per timestep."""
from __future__ import annotations

import math

import torch

from diffquant.evaluation import eps_errors


def test_eps_errors_are_relative_norms_overall_and_per_timestep() -> None:
    ref = torch.ones(3, 2, 1, 4, 4)  # (timesteps, images, C, H, W)
    approx = ref.clone()
    approx[1] += 0.5  # only the second timestep is off, by half of the reference everywhere
    overall, per_t = eps_errors(ref, approx, [900, 500, 100])
    assert per_t == {900: 0.0, 500: 0.5, 100: 0.0}
    assert math.isclose(overall, 0.5 / math.sqrt(3), rel_tol=1e-12)  # the error's norm over all three


def test_eps_errors_of_a_zero_reference_are_infinite_not_nan() -> None:
    overall, per_t = eps_errors(torch.zeros(1, 2, 4), torch.ones(1, 2, 4), [0])
    assert overall == math.inf and per_t == {0: math.inf}
