"""Per-timestep FP32-vs-quantized noise-prediction MSE along the quantized model's own trajectory."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import Tensor, nn

from diffquant.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.evaluation.trajectory import PairedEps, mean_over_steps, trajectory_eps_mse


class Scaled(nn.Module):
    """ε(x, t) = a·x + b: a closed-form stand-in for a denoiser."""

    def __init__(self, a: float, b: float = 0.0) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.a * x + self.b


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear_betas(100))


def test_identical_models_give_zero_at_every_sampler_step(diffusion) -> None:
    sample = partial(ddim_sample, diffusion=diffusion, steps=10)
    noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    per_t = trajectory_eps_mse(sample, Scaled(0.5), Scaled(0.5), noise)
    assert list(per_t) == sorted(ddim_timesteps(100, 10))
    assert all(v == 0.0 for v in per_t.values())


def test_a_constant_offset_gives_its_square_at_every_step(diffusion) -> None:
    """ε_q = ε_fp32 + 0.1 on the same x_t: MSE is 0.01 wherever the trajectory goes, batches included."""
    sample = partial(ddim_sample, diffusion=diffusion, steps=5)
    noise = torch.randn(10, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    per_t = trajectory_eps_mse(sample, Scaled(0.5), Scaled(0.5, 0.1), noise, batch_size=4)
    assert len(per_t) == 5 and all(v == pytest.approx(0.01, rel=1e-6) for v in per_t.values())


def test_error_is_measured_on_the_quantized_trajectory(diffusion) -> None:
    """The recorded inputs are the quantized model's states: MSE = (a_q - a_fp)^2 · mean(x_t^2) of its own x_t."""
    seen: dict[int, float] = {}
    sample = partial(
        ddim_sample, diffusion=diffusion, steps=4, callback=lambda i, t, x: seen.__setitem__(t, float((x.double() ** 2).mean()))
    )
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    per_t = trajectory_eps_mse(sample, Scaled(0.3), Scaled(0.6), noise)
    assert per_t == {t: pytest.approx(0.09 * seen[t], rel=1e-5) for t in seen}


def test_ddpm_visits_every_timestep(diffusion) -> None:
    paired = PairedEps(Scaled(1.0), Scaled(1.0, 0.2))
    ddpm_sample(paired, diffusion, torch.zeros(2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    per_t = paired.per_t()
    assert list(per_t) == list(range(100)) and per_t[0] == pytest.approx(0.04)


def test_summary_leaves_out_t0_unless_it_is_the_only_step() -> None:
    assert mean_over_steps({0: 100.0, 20: 1.0, 40: 3.0}) == 2.0
    assert mean_over_steps({0: 5.0}) == 5.0


class LabelShift(nn.Module):
    """ε(x, t, y) = a·x + y / 10: a conditional stand-in (label K is the null class)."""

    num_classes = 4

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        y = torch.full_like(t, 4) if y is None else y
        return self.a * x + y.float().view(-1, 1, 1, 1) / 10


def test_a_guided_model_is_compared_on_both_halves_of_each_call_in_batches_past_the_noise(diffusion) -> None:
    from diffquant.diffusion.guidance import guide_for
    from diffquant.evaluation.compare import Requested

    guide = guide_for(LabelShift(1.0), 2.0)
    labels = torch.arange(40) % 4  # more requests than the trajectory's rows, as with eval.traj_num_samples < num_samples
    requested = Requested(guide, labels, labels)
    noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sample = partial(ddim_sample, diffusion=diffusion, steps=4)
    per_t = trajectory_eps_mse(sample, LabelShift(1.0), LabelShift(1.1), noise, batch_size=256, bind=requested.bound)
    assert sorted(per_t) == ddim_timesteps(100, 4)[::-1] and all(v > 0 for v in per_t.values())
    paired = PairedEps(LabelShift(1.1), LabelShift(1.0))
    sample(requested.bound(paired, slice(0, 6)), noise=noise)
    assert per_t == pytest.approx(paired.per_t())
