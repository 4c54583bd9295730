"""Evaluation stage: sample from identical noise, compare with the FP32 reference, compute metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffquant.diffusion.guidance import Bound, Guide
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.evaluation.features import FeatureSpace, Reference
from diffquant.metrics.fid import feature_statistics, frechet_distance
from diffquant.metrics.inception_score import inception_score
from diffquant.metrics.precision_recall import precision_recall
from diffquant.metrics.quality import mse, psnr, relative_error, ssim
from diffquant.quant.gpu.runtime import is_gpu_execution
from diffquant.quant.lsq import to_device


class OnDevice(nn.Module):
    """A model on a GPU called with CPU tensors: inputs are copied over, outputs come back to the CPU as float."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, *args: Tensor) -> Tensor:
        return self.model(*(a.to(self.device) for a in args)).float().cpu()


def eval_device(requested: str, execution: str) -> torch.device:
    """Where evaluation runs both models: `device` for FP32, fake-quantized and GPU low-bit ones; torch.ao int8 kernels are CPU-only."""
    on_requested = execution in ("fp32", "fakequant") or is_gpu_execution(execution)
    return torch.device(requested) if on_requested else torch.device("cpu")


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself on the CPU; else moved to `device` (in place) behind an `OnDevice` that takes CPU tensors."""
    if device.type == "cpu":
        return model
    return OnDevice(to_device(model, device), device)


def synchronize(model: nn.Module) -> None:
    """Wait for a GPU model's queued kernels (CUDA runs asynchronously), so a clock read after it is honest."""
    model = model.model if isinstance(model, Bound) else model
    if isinstance(model, OnDevice) and model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


@torch.no_grad()
def warm_up(model: nn.Module, x: Tensor) -> None:
    """One untimed denoiser forward at the timed batch's shape: first-call costs (kernel selection, lazy
    init, a graph traced or compiled per shape, CUDA context and caches) stay out of the timing."""
    model(x, torch.zeros(x.shape[0], dtype=torch.long))
    synchronize(model)


@dataclass(frozen=True)
class Requested:
    """What each sample asks a conditional model for: the guide and one condition per noise row."""

    guide: Guide
    cond: Tensor
    labels: Tensor  # the label behind each condition (the class asked for, or the pool row)

    def first(self, n: int) -> Requested:
        """The requests of the first `n` rows."""
        return Requested(self.guide, self.cond[:n], self.labels[:n])

    def bound(self, model: nn.Module, rows: slice) -> nn.Module:
        """`model` bound to the conditions of `rows` (a `forward(x_t, t)` denoiser)."""
        return self.guide.bind(model, self.cond[rows])


def bind_rows(model: nn.Module, requested: Requested | None, rows: slice) -> nn.Module:
    """`model` itself (unconditional) or bound to the requested conditions of `rows`."""
    return model if requested is None else requested.bound(model, rows)


def sample_batched(
    sample: Callable[..., Tensor],
    model: nn.Module,
    noise: Tensor,
    batch_size: int,
    chunk: int | None = None,
    requested: Requested | None = None,
) -> tuple[Tensor, float]:
    """Sample every row of `noise` in batches that never cross a `chunk` boundary (one seed's draw);
    return the samples and the wall time of the first batch, taken after a warm-up at its shape.
    A conditional model samples row i with condition `requested.cond[i]`."""
    chunk = chunk or noise.shape[0]
    outputs, first_seconds = [], 0.0
    starts = [i for c in range(0, noise.shape[0], chunk) for i in range(c, min(c + chunk, noise.shape[0]), batch_size)]
    for i in starts:
        rows = slice(i, min(i + batch_size, (i // chunk + 1) * chunk))
        batch, denoiser = noise[rows], bind_rows(model, requested, rows)
        if i == 0:
            warm_up(denoiser, batch)
            start = time.perf_counter()
        outputs.append(sample(denoiser, noise=batch))
        if i == 0:
            synchronize(model)
            first_seconds = time.perf_counter() - start
    return torch.cat(outputs), first_seconds


def time_first_batch(
    sample: Callable[..., Tensor], model: nn.Module, noise: Tensor, batch_size: int, requested: Requested | None = None
) -> float:
    """Wall time to sample one evaluation batch (the same batch every model is timed on), after a warm-up."""
    batch, model = noise[:batch_size], bind_rows(model, requested, slice(0, batch_size))
    warm_up(model, batch)
    start = time.perf_counter()
    sample(model, noise=batch)
    synchronize(model)
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
    noise: Tensor  # [T, N, C, H, W], the ε that produced x

    @classmethod
    def build(cls, images: Tensor, diffusion: GaussianDiffusion, num_timesteps: int, seed: int) -> EpsProbe:
        generator = torch.Generator().manual_seed(seed)
        T = diffusion.num_timesteps
        ts = sorted({int((i + 0.5) * T / num_timesteps) for i in range(num_timesteps)})
        xs, noises = [], []
        for t in ts:
            noise = torch.randn(images.shape, generator=generator)
            xs.append(diffusion.q_sample(images, torch.full((images.shape[0],), t, dtype=torch.long), noise))
            noises.append(noise)
        return cls(torch.stack(xs), ts, torch.stack(noises))

    @torch.no_grad()
    def predictions(self, model: nn.Module, cond: Tensor | None = None) -> Tensor:
        """ε̂ at every probe (x_t, t); a conditional model gets `cond` (one per image, e.g. its true label)."""
        extra = () if cond is None else (cond,)
        return torch.stack([model(x, torch.full((x.shape[0],), t, dtype=torch.long), *extra) for x, t in zip(self.x, self.t)])

    def loss_per_t(self, predictions: Tensor) -> dict[int, float]:
        """The denoising loss MSE(ε_pred, ε) at each timestep (the training objective, per t)."""
        err = (predictions.double() - self.noise.double()) ** 2
        return {t: float(err[i].mean()) for i, t in enumerate(self.t)}

    def mixed_batch(self, per_timestep: int) -> tuple[Tensor, Tensor]:
        """(x, t) with `per_timestep` images from every timestep, for probing activations."""
        x = self.x[:, :per_timestep].reshape(-1, *self.x.shape[2:])
        t = torch.tensor(self.t, dtype=torch.long).repeat_interleave(min(per_timestep, self.x.shape[1]))
        return x, t


def eps_errors(ref: Tensor, approx: Tensor, timesteps: list[int]) -> tuple[float, dict[int, float]]:
    """Overall ‖ε_q − ε_fp32‖ / ‖ε_fp32‖ and its value at each timestep (`metrics.quality.relative_error`)."""
    per_t = {t: relative_error(approx[i], ref[i]) for i, t in enumerate(timesteps)}
    return relative_error(approx, ref), per_t


def finite_or_none(value: float) -> float | None:
    """Non-finite metrics are reported as null, never averaged in."""
    return value if value == value and abs(value) != float("inf") else None


@dataclass(frozen=True)
class SetFeatures:
    """One sample set in one feature space: features [N, D] and, where the space classifies, logits [N, C]."""

    features: Tensor
    logits: Tensor | None = None


def set_features(space: FeatureSpace, samples: Tensor) -> SetFeatures | None:
    """The features (and logits) of `samples` in `space`; None if any sample is not finite."""
    if not bool(torch.isfinite(samples).all()):
        return None
    return SetFeatures(space.extract(samples), space.logits(samples) if space.logits is not None else None)


def sample_features(
    spaces: list[FeatureSpace], fp32_samples: Tensor, q_samples: Tensor
) -> dict[str, tuple[SetFeatures | None, SetFeatures | None]]:
    """(FP32, quantized) features per space; identical sets are extracted once (minutes with Inception on a CPU)."""
    same = q_samples.shape == fp32_samples.shape and torch.equal(q_samples, fp32_samples)  # e.g. quant=fp32
    out = {}
    for space in spaces:
        quantized = set_features(space, q_samples)
        out[space.name] = (quantized if same else set_features(space, fp32_samples), quantized)
    return out


def space_metrics(space: FeatureSpace, ref: Reference, feats: SetFeatures | None, suffix: str, k: int) -> dict[str, float | None]:
    """FID, precision / recall (and IS where the space has logits) of one sample set in `space`."""
    s = space.short
    keys = [f"eval/fid_{s}", f"eval/precision_{s}", f"eval/recall_{s}"] + ([f"eval/is_{s}"] if space.logits else [])
    if feats is None:
        return {f"{key}{suffix}": None for key in keys}
    precision, recall = precision_recall(ref.features, feats.features, k)
    values: dict[str, float | None] = {
        f"eval/fid_{s}{suffix}": frechet_distance(ref.mu.numpy(), ref.sigma.numpy(), *feature_statistics(feats.features)),
        f"eval/precision_{s}{suffix}": precision,
        f"eval/recall_{s}{suffix}": recall,
    }
    if feats.logits is not None:
        values[f"eval/is_{s}{suffix}"] = inception_score(feats.logits)[0]
    return values


def sample_metrics(
    spaces: list[FeatureSpace],
    refs: dict[str, Reference],
    fp32_samples: Tensor,
    q_samples: Tensor,
    compare: bool,
    k: int = 3,
    features: dict[str, tuple[SetFeatures | None, SetFeatures | None]] | None = None,
) -> dict[str, float | None]:
    """Per feature space: FID / precision / recall / IS of both sample sets; PSNR / MSE vs FP32 when `compare`.

    `features` (from `sample_features`) saves a second extraction when the caller needs them too.
    """
    features = features if features is not None else sample_features(spaces, fp32_samples, q_samples)
    metrics: dict[str, float | None] = {}
    for space in spaces:
        fp32_feats, q_feats = features[space.name]
        quantized = space_metrics(space, refs[space.name], q_feats, "", k)
        metrics.update(quantized)
        if fp32_feats is q_feats:  # identical sample sets: the same values, without a second 2048-d FID
            metrics.update({f"{key}_fp32": value for key, value in quantized.items()})
        else:
            metrics.update(space_metrics(space, refs[space.name], fp32_feats, "_fp32", k))
    metrics["eval/psnr_vs_fp32"], metrics["eval/mse_vs_fp32"], metrics["eval/ssim_vs_fp32"] = None, None, None
    if compare and bool(torch.isfinite(q_samples).all()):
        metrics["eval/psnr_vs_fp32"] = finite_or_none(psnr(q_samples, fp32_samples, data_range=2.0))
        metrics["eval/mse_vs_fp32"] = mse(q_samples, fp32_samples)
        metrics["eval/ssim_vs_fp32"] = ssim(q_samples, fp32_samples, data_range=2.0)
    return metrics
