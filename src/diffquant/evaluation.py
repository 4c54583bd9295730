"""Evaluation stage: sample from identical noise, compare with the FP32 reference, compute metrics."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.metrics.classifier import DigitClassifier, extract_features
from diffquant.metrics.fid import fid_from_features
from diffquant.metrics.quality import mse, psnr


def sample_batched(sample: Callable[..., Tensor], model: nn.Module, noise: Tensor, batch_size: int) -> tuple[Tensor, float]:
    """Sample every row of `noise` in batches; return the samples and the wall time of the first batch."""
    outputs, first_seconds = [], 0.0
    for i in range(0, noise.shape[0], batch_size):
        start = time.perf_counter()
        outputs.append(sample(model, noise=noise[i : i + batch_size]))
        if i == 0:
            first_seconds = time.perf_counter() - start
    return torch.cat(outputs), first_seconds


def time_first_batch(sample: Callable[..., Tensor], model: nn.Module, noise: Tensor, batch_size: int) -> float:
    """Wall time to sample one evaluation batch (the same batch every model is timed on)."""
    start = time.perf_counter()
    sample(model, noise=noise[:batch_size])
    return time.perf_counter() - start


@dataclass
class EpsProbe:
    """A fixed held-out set of (x_t, t) pairs spread over the timesteps, for noise-prediction error.

    The timesteps are the midpoints of `n` equal strata, t_i = (i + 1/2) T / n (25, 75, ..., 975 for
    n = 20, T = 1000). t = 0 is left out on purpose: there x_t carries noise of std 0.01, below the
    step of an 8-bit input grid, so no int8 model can recover ε, and samplers weigh ε there by 0.01.
    """

    x: Tensor  # [T, N, C, H, W]
    t: list[int]

    @classmethod
    def build(cls, images: Tensor, diffusion: GaussianDiffusion, num_timesteps: int, seed: int) -> EpsProbe:
        generator = torch.Generator().manual_seed(seed)
        T = diffusion.num_timesteps
        ts = sorted({int((i + 0.5) * T / num_timesteps) for i in range(num_timesteps)})
        xs = []
        for t in ts:
            noise = torch.randn(images.shape, generator=generator)
            xs.append(diffusion.q_sample(images, torch.full((images.shape[0],), t, dtype=torch.long), noise))
        return cls(torch.stack(xs), ts)

    @torch.no_grad()
    def predictions(self, model: nn.Module) -> Tensor:
        return torch.stack([model(x, torch.full((x.shape[0],), t, dtype=torch.long)) for x, t in zip(self.x, self.t)])


def eps_errors(ref: Tensor, approx: Tensor, timesteps: list[int]) -> tuple[float, dict[int, float]]:
    """Overall ‖ε_q − ε_fp32‖ / ‖ε_fp32‖ and its value at each timestep."""
    diff, r = (approx - ref).double(), ref.double()
    per_t = {t: float(diff[i].norm() / r[i].norm()) for i, t in enumerate(timesteps)}
    return float(diff.norm() / r.norm()), per_t


def finite_or_none(value: float) -> float | None:
    """Non-finite metrics are reported as null, never averaged in."""
    return value if value == value and abs(value) != float("inf") else None


def sample_metrics(
    classifier: DigitClassifier, real: Tensor, fp32_samples: Tensor, q_samples: Tensor, compare: bool
) -> dict[str, float | None]:
    """fid_cls for both sample sets against held-out real images; PSNR / MSE vs FP32 when `compare`."""
    real_f = extract_features(classifier, real)
    finite = bool(torch.isfinite(q_samples).all())
    metrics: dict[str, float | None] = {
        "eval/fid_cls": fid_from_features(extract_features(classifier, q_samples), real_f) if finite else None,
        "eval/fid_cls_fp32": fid_from_features(extract_features(classifier, fp32_samples), real_f),
        "eval/psnr_vs_fp32": None,
        "eval/mse_vs_fp32": None,
    }
    if compare and finite:
        metrics["eval/psnr_vs_fp32"] = finite_or_none(psnr(q_samples, fp32_samples, data_range=2.0))
        metrics["eval/mse_vs_fp32"] = mse(q_samples, fp32_samples)
    return metrics
