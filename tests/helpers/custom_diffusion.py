"""A user's own sampler and beta schedule, as a package outside diffquant would write them (diffquant never imports this).

`trailing_sample` is DDIM (eta = 0) on the "trailing" timestep spacing of Lin et al. (2024), which
starts at t = T - 1 instead of ending at t = 0; `@visits` tells diffquant which timesteps it feeds the
model. `plain_sample` is the same without that companion: diffquant then assumes DDIM's spacing.
`quadratic_betas` is the quadratic schedule of the DDPM code base. The rest are broken on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.diffusion.samplers import StepCallback, visits
from diffquant.diffusion.schedule import GaussianDiffusion


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T - 1 down, evenly spaced (T = 1000, steps = 4: 999, 749, 499, 249)."""
    return [round(num_timesteps - i * num_timesteps / steps) - 1 for i in range(steps)]


def _ddim(model: nn.Module, diffusion: GaussianDiffusion, noise: Tensor, ts: list[int], callback: StepCallback | None) -> Tensor:
    x = noise
    for i, t in enumerate(ts):
        if callback is not None:
            callback(i, t, x)
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        a_t = diffusion.alpha_bar(tt)
        a_prev = diffusion.alpha_bar(torch.full_like(tt, ts[i + 1])) if i + 1 < len(ts) else torch.ones_like(a_t)
        eps = model(x, tt)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@visits(trailing_timesteps)
@torch.no_grad()
def trailing_sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    steps: int = 10,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Deterministic DDIM on trailing timesteps (`eta` and `generator` unused)."""
    return _ddim(model, diffusion, noise, trailing_timesteps(diffusion.num_timesteps, steps), callback)


@torch.no_grad()
def plain_sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    steps: int = 10,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Deterministic DDIM on DDIM's own spacing, with no `timesteps` companion."""
    stride = diffusion.num_timesteps // steps
    return _ddim(model, diffusion, noise, list(range(0, stride * steps, stride))[::-1], callback)


def quadratic_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas on a quadratic ramp: sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def short_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Broken: one beta too few."""
    return torch.linspace(beta_start, beta_end, num_timesteps - 1, dtype=torch.float64)


def betas_without_end(num_timesteps: int, beta_start: float = 1e-4) -> Tensor:
    """Broken: does not take beta_end."""
    return torch.full((num_timesteps,), beta_start, dtype=torch.float64)


def sample_without_callback(
    model: nn.Module, diffusion: GaussianDiffusion, noise: Tensor, steps: int = 10, eta: float = 0.0, generator: object = None
) -> Tensor:
    """Broken: calibration could not see its steps."""
    return noise
