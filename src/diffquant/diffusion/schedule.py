"""Noise schedules and the forward process of DDPM (Ho et al., 2020), model-agnostic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Return float64 betas for `linear` (DDPM) or `cosine` (Nichol & Dhariwal, 2021) schedules."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise DiffquantError(f"diffusion.schedule={schedule!r} is not known; allowed: linear, cosine")


@dataclass
class GaussianDiffusion:
    """The DDPM forward process q(x_t | x_0) and the epsilon-prediction training loss."""

    betas: Tensor

    def __post_init__(self) -> None:
        self.betas = self.betas.to(torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    @classmethod
    def from_config(cls, schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> GaussianDiffusion:
        """Build from the `diffusion` config group's fields."""
        return cls(make_betas(schedule, num_timesteps, beta_start, beta_end))

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

    def training_loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error between ε and the model's prediction at uniformly drawn t."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
        return nn.functional.mse_loss(model(self.q_sample(x0, t, noise), t), noise)
