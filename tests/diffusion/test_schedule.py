"""Schedules, q_sample and samplers against closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from diffquant.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample, sampler_timesteps
from diffquant.diffusion.schedule import GaussianDiffusion, cosine_betas, linear_betas, schedule_betas
from diffquant.errors import DiffquantError
from helpers.custom_diffusion import plain_sample, trailing_sample


def test_linear_betas_match_ddpm() -> None:
    betas = linear_betas(1000, 1e-4, 0.02)
    assert betas.shape == (1000,)
    torch.testing.assert_close(betas[[0, 999]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    torch.testing.assert_close(betas[1] - betas[0], torch.tensor((0.02 - 1e-4) / 999, dtype=torch.float64))


def test_alpha_bar_is_cumulative_product() -> None:
    d = GaussianDiffusion(linear_betas(10, 0.1, 0.2))
    expected = math.prod(1 - (0.1 + 0.1 * i / 9) for i in range(5))
    assert d.alpha_bar(torch.tensor([4])).item() == pytest.approx(expected, rel=1e-6)


def test_cosine_alpha_bar_matches_closed_form() -> None:
    T, s = 1000, 0.008
    d = GaussianDiffusion(cosine_betas(T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert d.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)


def test_q_sample_closed_form() -> None:
    d = GaussianDiffusion(linear_betas(1000))
    x0, noise, t = torch.full((2, 1, 4, 4), 0.5), torch.full((2, 1, 4, 4), -1.0), torch.tensor([0, 999])
    out = d.q_sample(x0, t, noise)
    a = d.alphas_cumprod[[0, 999]].float()
    expected = a.sqrt().view(-1, 1, 1, 1) * 0.5 - (1 - a).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(out, expected.expand_as(out))


def test_a_schedule_is_called_by_import_path_and_its_betas_checked() -> None:
    torch.testing.assert_close(
        schedule_betas("diffquant.diffusion.schedule.linear_betas", 10, 0.1, 0.2), linear_betas(10, 0.1, 0.2)
    )
    with pytest.raises(DiffquantError, match=r"^diffusion\._target_='quadratic' is not an import path"):
        schedule_betas("quadratic", 10)
    with pytest.raises(
        DiffquantError, match=r"^diffusion\._target_=helpers\.custom_diffusion\.short_betas returned torch\.float64 "
    ):
        schedule_betas("helpers.custom_diffusion.short_betas", 10)
    with pytest.raises(DiffquantError, match=r"returned betas in \[0\.1, 1\]; expected each beta in \(0, 1\)$"):
        schedule_betas("diffquant.diffusion.schedule.linear_betas", 10, 0.1, 1.0)


def test_ddim_timesteps_are_even_and_end_at_zero() -> None:
    assert ddim_timesteps(1000, 4) == [750, 500, 250, 0]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(DiffquantError, match="sampler.steps=0"):
        ddim_timesteps(1000, 0)


class Oracle(torch.nn.Module):
    """Predicts the exact noise that leads from x0 to x_t: every sampler must then return x0."""

    def __init__(self, x0: torch.Tensor, d: GaussianDiffusion) -> None:
        super().__init__()
        self.x0, self.d = x0, d

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.d.alpha_bar(t)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample], ids=["ddim", "ddpm"])
def test_samplers_recover_x0_with_an_oracle(sampler) -> None:
    d = GaussianDiffusion(linear_betas(100))
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    out = sampler(Oracle(x0, d), d, torch.randn(3, 1, 4, 4), steps=10, eta=0.0, generator=gen)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_sampler_callback_sees_every_step_and_ddim_is_deterministic() -> None:
    d = GaussianDiffusion(linear_betas(100))
    model = Oracle(torch.zeros(2, 1, 4, 4), d)
    seen: list[int] = []
    noise = torch.randn(2, 1, 4, 4)
    a = ddim_sample(model, d, noise, steps=5, callback=lambda i, t, x: seen.append(t))
    b = ddim_sample(model, d, noise, steps=5)
    assert seen == [80, 60, 40, 20, 0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sampler_timesteps(ddim_sample, 100, 5) == seen


def visited(sampler: Callable[..., torch.Tensor], d: GaussianDiffusion, steps: int) -> list[int]:
    """The timesteps `sampler` calls back at, in order."""
    seen: list[int] = []
    sampler(Oracle(torch.zeros(1, 1, 2, 2), d), d, torch.randn(1, 1, 2, 2), steps=steps, callback=lambda i, t, x: seen.append(t))
    return seen


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        (ddim_sample, [9, 6, 3, 0]),
        (ddpm_sample, list(range(11, -1, -1))),
        (trailing_sample, [11, 8, 5, 2]),  # a user sampler with its `timesteps` companion
        (plain_sample, [9, 6, 3, 0]),  # a user sampler without one: DDIM's spacing is assumed, and is what it does
    ],
    ids=["ddim", "ddpm", "user-with-companion", "user-without"],
)
def test_each_sampler_says_which_timesteps_it_visits(sampler: Callable[..., torch.Tensor], expected: list[int]) -> None:
    d = GaussianDiffusion(linear_betas(12))
    assert sampler_timesteps(sampler, 12, 4) == visited(sampler, d, 4) == expected
