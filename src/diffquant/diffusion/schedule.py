"""Noise schedules and the forward process of DDPM (Ho et al., 2020), model-agnostic.

A schedule is any function `(num_timesteps, beta_start, beta_end) -> betas` named by
`diffusion._target_`; `linear_betas` and `cosine_betas` are the built-in ones (conf/diffusion/).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffquant.components import Component, import_target, signature_of
from diffquant.errors import DiffquantError

SCHEDULE_PARAMETERS = ("num_timesteps", "beta_start", "beta_end")  # what diffquant passes, from the diffusion group


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear betas from `beta_start` to `beta_end` (float64)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Nichol & Dhariwal's (2021) cosine schedule (float64); it fixes its own ends, so `beta_start` / `beta_end` are unused."""
    del beta_start, beta_end
    s = 0.008
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)


def builtin_schedules() -> dict[str, Callable[..., Tensor]]:
    """The schedules diffquant ships, by config name: conf/diffusion/<name>.yaml names each by `_target_`."""
    return {"linear": linear_betas, "cosine": cosine_betas}


def load_schedule(target: str) -> Callable[..., Tensor]:
    """Import `diffusion._target_` and check that it takes (num_timesteps, beta_start, beta_end)."""
    fn = import_target(target, "diffusion._target_")
    sig = signature_of(fn, f"diffusion._target_={target}")
    missing = [] if sig.any_keyword else [k for k in SCHEDULE_PARAMETERS if k not in sig.names]
    extra = [n for n in sig.required if n not in SCHEDULE_PARAMETERS]
    if missing or extra:
        problem = f"does not take {', '.join(missing)}" if missing else f"needs {', '.join(extra)}, which diffquant does not pass"
        raise DiffquantError(
            f"diffusion._target_={target} {problem}; expected a function (num_timesteps, beta_start, beta_end) -> betas"
        )
    return fn


def schedule_betas(target: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Call the schedule `target` and check its betas: float, one per timestep, each in (0, 1)."""
    load_schedule(target)
    arguments = {"num_timesteps": num_timesteps, "beta_start": beta_start, "beta_end": beta_end}
    betas = Component("diffusion", target, arguments).build()  # an error inside it is one line naming diffusion._target_
    if not isinstance(betas, Tensor) or not betas.is_floating_point() or tuple(betas.shape) != (num_timesteps,):
        got = f"{betas.dtype} of shape {tuple(betas.shape)}" if isinstance(betas, Tensor) else f"a {type(betas).__name__}"
        raise DiffquantError(
            f"diffusion._target_={target} returned {got}; expected a float tensor of diffusion.num_timesteps={num_timesteps} betas"
        )
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise DiffquantError(
            f"diffusion._target_={target} returned betas in [{float(betas.min()):.4g}, {float(betas.max()):.4g}]; "
            "expected each beta in (0, 1)"
        )
    return betas.to(torch.float64)


@dataclass
class GaussianDiffusion:
    """The DDPM forward process q(x_t | x_0) and the epsilon-prediction training loss."""

    betas: Tensor

    def __post_init__(self) -> None:
        self.betas = self.betas.to(torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    @classmethod
    def from_config(cls, target: str, num_timesteps: int, beta_start: float, beta_end: float) -> GaussianDiffusion:
        """Build from the `diffusion` config group's fields (`target`: the schedule's import path)."""
        return cls(schedule_betas(target, num_timesteps, beta_start, beta_end))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t broadcast to [B, 1, 1, 1] (float32) for integer timesteps t of shape [B]."""
        return self.alphas_cumprod.to(t.device)[t].float().view(-1, 1, 1, 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        a = self.alpha_bar(t)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def training_loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None, *cond: Tensor) -> Tensor:
        """Mean squared error between ε and the model's prediction at uniformly drawn t (given `cond` where conditional)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
        return nn.functional.mse_loss(model(self.q_sample(x0, t, noise), t, *cond), noise)
