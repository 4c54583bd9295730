"""Timestep-aware calibration data: (x_t, t) pairs from the FP32 model's own sampling trajectory.

Calibrating a denoiser on clean images is wrong: its inputs are noisy x_t whose statistics change
with t (Q-Diffusion, PTQ4DM). We run the FP32 sampler and keep the inputs it feeds the model (for a
conditional model with its conditions, and under guidance both halves of each batched call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.diffusion.guidance import Guide
from diffquant.quant.config import CalibConfig
from diffquant.quant.machine import pinned_threads

Inputs = tuple[Tensor, ...]  # one model call's positional inputs: (x_t, t) or (x_t, t, cond)


@dataclass
class CalibrationData:
    """Model inputs captured along sampling trajectories: x [N, C, H, W], integer t [N] and, for a conditional
    model, the condition of each call `cond` [N, ...] (class labels or embeddings).

    Under classifier-free guidance (`guidance_scale` != 1) the rows are the model's actual batched calls:
    each trajectory state appears with its condition and with the null condition.
    """

    x: Tensor
    t: Tensor
    cond: Tensor | None = None
    guidance_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.t)

    def rows(self, idx: Tensor | slice) -> Inputs:
        """The model inputs of the selected rows."""
        parts = (self.x[idx], self.t[idx])
        return parts if self.cond is None else (*parts, self.cond[idx])

    def inputs(self) -> Inputs:
        """Every row's model inputs as one batch."""
        return self.rows(slice(None))

    def subset(self, n: int, seed: int = 0) -> CalibrationData:
        """A seeded random subset of at most n pairs (all timesteps stay represented on average)."""
        if n >= len(self.t):
            return self
        idx = torch.randperm(len(self.t), generator=torch.Generator().manual_seed(seed))[:n]
        return CalibrationData(*self.rows(idx), guidance_scale=self.guidance_scale)

    def random_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Inputs]:
        """An endless stream of random input batches (data-free QAT draws from the teacher's trajectories)."""
        while True:
            yield self.rows(torch.randint(0, len(self.t), (min(batch_size, len(self.t)),), generator=generator))

    def cycled(self, n: int) -> Inputs:
        """One batch of exactly n rows: the set in order, repeated as often as needed."""
        return self.rows(torch.arange(n) % len(self.t))

    def batches(self, batch_size: int) -> list[Inputs]:
        """Consecutive input batches covering the whole set."""
        return [self.rows(slice(i, i + batch_size)) for i in range(0, len(self.t), batch_size)]

    def to(self, device: str | torch.device) -> CalibrationData:
        """The same pairs on `device` (the CPU copy stays: the cache and the sampler's CPU uses read it)."""
        cond = None if self.cond is None else self.cond.to(device)
        return CalibrationData(self.x.to(device), self.t.to(device), cond, self.guidance_scale)

    def to_blob(self) -> dict[str, object]:
        """The tensors and the guidance scale, for `torch.save`."""
        return {"x": self.x, "t": self.t, "cond": self.cond, "guidance_scale": self.guidance_scale}

    @classmethod
    def from_blob(cls, blob: dict[str, object]) -> CalibrationData:
        """The inverse of `to_blob` (files written before conditions existed read as unconditional)."""
        return cls(blob["x"], blob["t"], blob.get("cond"), float(blob.get("guidance_scale", 1.0)))  # type: ignore[arg-type]


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
    sample: Callable[..., Tensor],
    num_steps: int,
    keep_timesteps: int,
    noise: Tensor,
    keep: set[int] | None = None,
    conditions: Conditions | None = None,
) -> CalibrationData:
    """Run `sample(noise=..., callback=...)` and keep x_t at the step indices `keep` (default: evenly spread).

    With `conditions` (the guide and each trajectory's condition) the sampler gets the bound model
    `sample(model, noise=..., callback=...)` and the kept rows are the guided model's actual inputs.
    """
    keep = pick_indices(num_steps, keep_timesteps) if keep is None else keep
    rows: list[Inputs] = []

    def capture(step: int, t: int, x: Tensor) -> None:
        if step in keep:
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            x = x.detach().cpu().clone()
            rows.append((x, tt) if conditions is None else conditions.guide.inputs(x, tt, conditions.cond))

    with pinned_threads(1):  # the pairs are bit-identical whatever the thread count
        if conditions is None:
            sample(noise=noise, callback=capture)
        else:
            sample(conditions.guide.bind(conditions.model, conditions.cond), noise=noise, callback=capture)
    parts = [torch.cat(column) for column in zip(*rows)]
    scale = 1.0 if conditions is None else conditions.guide.scale
    return CalibrationData(*parts, guidance_scale=scale)


@dataclass(frozen=True)
class Conditions:
    """A conditional FP32 model, its guide and the condition of each calibration trajectory."""

    model: nn.Module
    guide: Guide
    cond: Tensor


def trajectory_pairs(
    sample: Callable[..., Tensor],
    step_timesteps: list[int],
    calib: CalibConfig,
    num_timesteps: int,
    shape: tuple[int, ...],
    seed: int,
    conditions: Conditions | None = None,
) -> CalibrationData:
    """`calib.timesteps` steps of `calib.num_samples` FP32 trajectories from seeded noise (the CLI's and the API's pairs).

    `sample(noise=..., callback=...)` runs the sampler on the FP32 model (with `conditions`:
    `sample(model, noise=..., callback=...)`, the model bound to its conditions); `step_timesteps`
    are the timesteps it visits; `shape` is one image's (C, H, W).
    """
    keep = (
        pick_indices(len(step_timesteps), calib.timesteps)
        if calib.t_sampling == "uniform"
        else pick_indices_normal(step_timesteps, calib.timesteps, calib.t_mean, calib.t_std, num_timesteps, seed=seed)
    )
    noise = torch.randn((calib.num_samples, *shape), generator=torch.Generator().manual_seed(seed + 1))
    return collect_trajectory(sample, len(step_timesteps), calib.timesteps, noise, keep, conditions)


@torch.no_grad()
def run_calibration(model: nn.Module, data: CalibrationData, batch_size: int, progress: bool = False) -> None:
    """Feed every calibration pair through the model so its observers record activation ranges."""
    model.eval()
    device = next(model.parameters()).device
    with pinned_threads(1):  # ranges identical whatever the thread count (see machine.pinned_threads)
        for batch in tqdm(data.batches(batch_size), desc="calibrate", disable=not progress, leave=False):
            model(*(part.to(device) for part in batch))
