"""Timestep-aware calibration data: (x_t, t) pairs from the FP32 model's own sampling trajectory.

Calibrating a denoiser on clean images is wrong: its inputs are noisy x_t whose statistics change
with t (Q-Diffusion, PTQ4DM). We run the FP32 sampler and keep the inputs it feeds the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.quant.config import CalibConfig
from diffquant.quant.machine import pinned_threads


@dataclass
class CalibrationData:
    """Model inputs captured along sampling trajectories: x [N, C, H, W] and integer t [N]."""

    x: Tensor
    t: Tensor

    def subset(self, n: int, seed: int = 0) -> CalibrationData:
        """A seeded random subset of at most n pairs (all timesteps stay represented on average)."""
        if n >= len(self.t):
            return self
        idx = torch.randperm(len(self.t), generator=torch.Generator().manual_seed(seed))[:n]
        return CalibrationData(self.x[idx], self.t[idx])

    def random_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless stream of random (x_t, t) batches (data-free QAT draws from the teacher's trajectories)."""
        while True:
            idx = torch.randint(0, len(self.t), (min(batch_size, len(self.t)),), generator=generator)
            yield self.x[idx], self.t[idx]

    def cycled(self, n: int) -> tuple[Tensor, Tensor]:
        """One batch of exactly n pairs: the set in order, repeated as often as needed."""
        idx = torch.arange(n) % len(self.t)
        return self.x[idx], self.t[idx]

    def batches(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """Consecutive (x, t) batches covering the whole set."""
        return [(self.x[i : i + batch_size], self.t[i : i + batch_size]) for i in range(0, len(self.t), batch_size)]


def pick_indices(num_steps: int, keep: int) -> set[int]:
    """`keep` step indices spread evenly over a trajectory of `num_steps` model evaluations."""
    keep = max(1, min(keep, num_steps))
    return {round(i * (num_steps - 1) / max(keep - 1, 1)) for i in range(keep)}


def pick_indices_normal(
    step_timesteps: list[int], keep: int, mean: float, std: float, num_timesteps: int, seed: int = 0
) -> set[int]:
    """PTQ4DM-style: draw t ~ N(mean·T, std·T), snap each to the nearest sampler step, until `keep` distinct steps."""
    keep = max(1, min(keep, len(step_timesteps)))
    generator = torch.Generator().manual_seed(seed)
    steps = torch.tensor(step_timesteps, dtype=torch.float64)
    chosen: set[int] = set()
    for _ in range(100 * keep):
        if len(chosen) == keep:
            break
        t = mean * num_timesteps + std * num_timesteps * torch.randn((), generator=generator, dtype=torch.float64)
        chosen.add(int((steps - t).abs().argmin()))
    return chosen


def collect_trajectory(
    sample: Callable[..., Tensor], num_steps: int, keep_timesteps: int, noise: Tensor, keep: set[int] | None = None
) -> CalibrationData:
    """Run `sample(noise=..., callback=...)` and keep x_t at the step indices `keep` (default: evenly spread)."""
    keep = pick_indices(num_steps, keep_timesteps) if keep is None else keep
    xs: list[Tensor] = []
    ts: list[Tensor] = []

    def capture(step: int, t: int, x: Tensor) -> None:
        if step in keep:
            xs.append(x.detach().cpu().clone())
            ts.append(torch.full((x.shape[0],), t, dtype=torch.long))

    with pinned_threads(1):  # the pairs are bit-identical whatever the thread count
        sample(noise=noise, callback=capture)
    return CalibrationData(torch.cat(xs), torch.cat(ts))


def trajectory_pairs(
    sample: Callable[..., Tensor],
    step_timesteps: list[int],
    calib: CalibConfig,
    num_timesteps: int,
    shape: tuple[int, ...],
    seed: int,
) -> CalibrationData:
    """`calib.timesteps` steps of `calib.num_samples` FP32 trajectories from seeded noise (the CLI's and the API's pairs).

    `sample(noise=..., callback=...)` runs the sampler on the FP32 model; `step_timesteps` are the
    timesteps it visits; `shape` is one image's (C, H, W).
    """
    keep = (
        pick_indices(len(step_timesteps), calib.timesteps)
        if calib.t_sampling == "uniform"
        else pick_indices_normal(step_timesteps, calib.timesteps, calib.t_mean, calib.t_std, num_timesteps, seed=seed)
    )
    noise = torch.randn((calib.num_samples, *shape), generator=torch.Generator().manual_seed(seed + 1))
    return collect_trajectory(sample, len(step_timesteps), calib.timesteps, noise, keep)


@torch.no_grad()
def run_calibration(model: nn.Module, data: CalibrationData, batch_size: int, progress: bool = False) -> None:
    """Feed every calibration pair through the model so its observers record activation ranges."""
    model.eval()
    device = next(model.parameters()).device
    with pinned_threads(1):  # ranges identical whatever the thread count (see machine.pinned_threads)
        for x, t in tqdm(data.batches(batch_size), desc="calibrate", disable=not progress, leave=False):
            model(x.to(device), t.to(device))
