"""Reverse-process samplers as pure functions with one signature (DDIM, DDPM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError

# callback(step_index, t, x_t) is called before each model evaluation; calibration uses it.
StepCallback = Callable[[int, int, Tensor], None]


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps, descending, always ending at t = 0 (as in DDIM's `uniform` skip)."""
    if not 1 <= steps <= num_timesteps:
        raise DiffquantError(f"sampler.steps={steps} must be within 1..{num_timesteps} (diffusion.num_timesteps)")
    stride = num_timesteps // steps
    return list(range(0, stride * steps, stride))[::-1]


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al., 2021) from x_T = noise; eta=0 is deterministic, eta=1 matches DDPM's variance."""
    x = noise
    ts = ddim_timesteps(diffusion.num_timesteps, steps)
    for i, t in enumerate(tqdm(ts, desc="ddim", disable=not progress, leave=False)):
        if callback is not None:
            callback(i, t, x)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = model(x, tt)
        a_t = diffusion.alpha_bar(tt)
        a_prev = diffusion.alpha_bar(torch.full_like(tt, ts[i + 1])) if i + 1 < len(ts) else torch.ones_like(a_t)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
    return x


@torch.no_grad()
def ddpm_sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    noise: Tensor,
    steps: int = 0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral DDPM sampling over every timestep (`steps` and `eta` are ignored), posterior variance β̃_t."""
    del steps, eta
    x = noise
    ac = diffusion.alphas_cumprod
    for i, t in enumerate(tqdm(range(diffusion.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress, leave=False)):
        if callback is not None:
            callback(i, t, x)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = model(x, tt)
        a_t, beta = float(ac[t]), float(diffusion.betas[t])
        a_prev = float(ac[t - 1]) if t > 0 else 1.0
        x0 = ((x - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)
        mean = (a_prev**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
        if t > 0:
            var = beta * (1 - a_prev) / (1 - a_t)
            mean = mean + var**0.5 * torch.randn(x.shape, generator=generator).to(x.device)
        x = mean
    return x


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look up a sampler function by its config name (`ddim` or `ddpm`)."""
    samplers: dict[str, Callable[..., Tensor]] = {"ddim": ddim_sample, "ddpm": ddpm_sample}
    if name not in samplers:
        raise DiffquantError(f"sampler.name={name!r} is not known; allowed: {', '.join(samplers)}")
    return samplers[name]
