"""Reverse-process samplers as pure functions with one signature (DDIM, DDPM), and the timesteps each visits.

`sampler._target_` names any function called as `sample(model, diffusion=, noise=, steps=, eta=,
generator=, callback=)`, like `ddim_sample`. Its `timesteps(num_timesteps, steps)` companion (set by
`@visits`) says which timesteps it feeds the model, in order: calibration keeps pairs at those steps
and the evaluation protocol counts them. A function without one is taken to visit DDIM's
`sampler.steps` evenly spaced timesteps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.components import import_target, signature_of
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError, check_range

# callback(step_index, t, x_t) is called before each model evaluation; calibration uses it.
StepCallback = Callable[[int, int, Tensor], None]
Timesteps = Callable[[int, int], list[int]]  # (num_timesteps, steps) -> the timesteps visited, in order
F = TypeVar("F", bound=Callable[..., Any])
# What the pipeline passes after the model (`functools.partial` and the callers in evaluation/, quant/).
CALLED_WITH = ("diffusion", "noise", "steps", "eta", "generator", "callback")
EXPECTED = "sample(model, diffusion, noise, steps, eta, generator, callback) like diffquant.diffusion.samplers.ddim_sample"


def visits(timesteps: Timesteps) -> Callable[[F], F]:
    """Record on a sampler which timesteps it visits (read by `sampler_timesteps`)."""

    def mark(fn: F) -> F:
        fn.timesteps = timesteps  # type: ignore[attr-defined]
        return fn

    return mark


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps, descending, always ending at t = 0 (as in DDIM's `uniform` skip)."""
    check_range("sampler.steps", steps, 1)
    if steps > num_timesteps:
        raise DiffquantError(
            f"sampler.steps={steps} is more than diffusion.num_timesteps={num_timesteps} "
            f"(DDIM takes at most one step per timestep); allowed: 1..{num_timesteps}"
        )
    stride = num_timesteps // steps
    return list(range(0, stride * steps, stride))[::-1]


def ddpm_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Every timestep, descending (ancestral sampling ignores `steps`)."""
    del steps
    return list(range(num_timesteps - 1, -1, -1))


def sampler_timesteps(sample: Callable[..., Any], num_timesteps: int, steps: int) -> list[int]:
    """The timesteps `sample` feeds the model, in order: its `timesteps` companion, else DDIM's spacing."""
    timesteps: Timesteps = getattr(sample, "timesteps", ddim_timesteps)
    return list(timesteps(num_timesteps, steps))


@visits(ddim_timesteps)
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


@visits(ddpm_timesteps)
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
    del eta
    x = noise
    ac = diffusion.alphas_cumprod
    for i, t in enumerate(tqdm(ddpm_timesteps(diffusion.num_timesteps, steps), desc="ddpm", disable=not progress, leave=False)):
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


def builtin_samplers() -> dict[str, Callable[..., Tensor]]:
    """The samplers diffquant ships, by config name: conf/sampler/<name>.yaml names each by `_target_`."""
    return {"ddim": ddim_sample, "ddpm": ddpm_sample}


def load_sampler(target: str) -> Callable[..., Tensor]:
    """Import `sampler._target_` and check that it takes the model first and the keywords diffquant passes."""
    fn = import_target(target, "sampler._target_")
    sig = signature_of(fn, f"sampler._target_={target}")
    first = sig.names[0] if sig.names else None
    missing = [] if sig.any_keyword else [k for k in CALLED_WITH if k not in sig.names]
    extra = [n for n in sig.required if n != first and n not in CALLED_WITH]
    if first is None or first in CALLED_WITH:
        problem = "has no model parameter before its keywords"
    elif missing:
        problem = f"does not take {', '.join(missing)}"
    elif extra:
        problem = f"needs {', '.join(extra)}, which diffquant does not pass"
    else:
        return fn
    raise DiffquantError(f"sampler._target_={target} {problem}; expected {EXPECTED}")
