"""evaluation/compare.py: the noise-prediction error, overall and per timestep; warm-up before the timed batch."""

from __future__ import annotations

import math
import time

import torch

from diffquant.evaluation.compare import eps_errors, sample_batched, time_first_batch


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


class FirstCallSlow(torch.nn.Module):
    """A denoiser whose first call costs `delay` seconds (lazy init, a trace per shape); records call shapes."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.shapes = delay, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.shapes:
            time.sleep(self.delay)
        self.shapes.append(tuple(x.shape))
        return x * 0.5


def one_step(model: torch.nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """A 1-step 'sampler': one denoiser call per batch."""
    return model(noise, torch.zeros(noise.shape[0], dtype=torch.long))


def test_sampling_is_timed_after_a_warm_up_at_the_timed_shape() -> None:
    model = FirstCallSlow(delay=0.3)
    noise = torch.randn(10, 1, 4, 4)
    samples, seconds = sample_batched(one_step, model, noise, batch_size=4, chunk=5)
    # a warm-up at the first batch's shape, then batches that never cross a seed's 5 rows: 4 + 1, 4 + 1
    assert model.shapes == [(4, 1, 4, 4), (4, 1, 4, 4), (1, 1, 4, 4), (4, 1, 4, 4), (1, 1, 4, 4)]
    torch.testing.assert_close(samples, noise * 0.5)
    assert seconds < 0.1  # the 0.3 s first call was the untimed warm-up
    cold = FirstCallSlow(delay=0.3)
    assert time_first_batch(one_step, cold, noise[:5], batch_size=4) < 0.1
    assert cold.shapes == [(4, 1, 4, 4), (4, 1, 4, 4)]  # the same timed batch as the quantized model's


def test_sample_batched_without_chunks_is_one_run_of_batches() -> None:
    model = FirstCallSlow(delay=0.0)
    sample_batched(one_step, model, torch.randn(10, 1, 2, 2), batch_size=4)
    assert [s[0] for s in model.shapes] == [4, 4, 4, 2]
