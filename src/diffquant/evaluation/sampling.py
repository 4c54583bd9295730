"""The evaluation's two sample sets: FP32 (cached per seed) and quantized, drawn from the same noise and timed
on the same first batch; what the evaluation stage takes in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.cache.lock import cache_lock
from diffquant.cache.store import atomic_torch_save, config_hash, load_if_readable
from diffquant.config import EvalConfig
from diffquant.data.datasets import DataSplit
from diffquant.diffusion.config import DiffusionConfig, SamplerConfig
from diffquant.diffusion.guidance import Guide
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.evaluation.compare import (
    Requested,
    on_device,
    sample_batched,
    time_first_batch,
)
from diffquant.evaluation.conditional import requested_labels
from diffquant.metrics.classifier import DigitClassifier


@dataclass
class EvalInputs:
    """What the evaluation needs from the earlier stages."""

    data: DataSplit
    diffusion: GaussianDiffusion
    sample: Callable[..., Tensor]  # sample(model, noise=...) with the configured sampler
    fp32_model: nn.Module
    fp32_entry_dir: Path  # FP32 reference samples are cached here
    q_model: nn.Module
    execution: str  # fp32 | int8 | fakequant
    classifier: DigitClassifier
    classifier_acc: float
    device: str = "cpu"  # cfg.device: FP32 and fake-quantized models are sampled there (int8 stays on the CPU)
    guide: Guide | None = None  # a conditional model's (sampler.guidance_scale, its null condition)
    baselines: dict[str, nn.Module] = field(default_factory=dict)  # timed on the first batch too: perf/sample_s_<name>


def reference_samples(
    sampler: SamplerConfig,
    diffusion: DiffusionConfig,
    num_samples: int,
    entry_dir: Path,
    seed: int,
    make: Callable[[], Tensor],
) -> Tensor:
    """FP32 samples from one seed's evaluation noise, cached next to the FP32 checkpoint per sampler, N and seed."""
    key = config_hash({"sampler": sampler.key(), "diffusion": diffusion.key(), "n": num_samples, "seed": seed})
    path = entry_dir / f"samples_{key}.pt"
    with cache_lock(path, "FP32 reference samples"):  # concurrent sweep jobs: one samples, the others wait
        cached = load_if_readable(path, "FP32 reference samples")
        if cached is not None:
            return cached
        samples = make()
        atomic_torch_save(samples, path)
        return samples


def eval_noise(seeds: list[int], num_samples: int, shape: tuple[int, ...]) -> list[Tensor]:
    """The evaluation noise: `num_samples` draws of `shape` per seed, each from its own generator."""
    return [torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed)) for seed in seeds]


@dataclass
class Sampled:
    """Both sample sets from the pooled evaluation noise, the first-batch timings and where they ran."""

    noise: Tensor
    fp32: Tensor
    quantized: Tensor
    seconds: dict[str, float]
    context: dict[str, Any]
    requested: Requested | None = None  # a conditional model: the condition of every noise row


def sample_both(
    ev: EvalConfig,
    sampler: SamplerConfig,
    diffusion: DiffusionConfig,
    inputs: EvalInputs,
    fp32_run: nn.Module,
    q_run: nn.Module,
    device: torch.device,
) -> Sampled:
    """FP32 (cached per seed) and quantized samples from the same noise; both timed on the same first batch after a warm-up."""
    data = inputs.data
    noises = eval_noise(list(ev.seeds), ev.num_samples, (data.channels, data.image_size, data.image_size))
    guide = inputs.guide
    requested = None
    if guide is not None:
        labels = requested_labels(guide, len(ev.seeds), ev.num_samples)
        requested = Requested(guide, guide.from_labels(labels), labels)
    per_seed = None if requested is None else requested.first(ev.num_samples)  # every seed asks for the same
    fp32 = torch.cat(
        [
            reference_samples(
                sampler,
                diffusion,
                ev.num_samples,
                inputs.fp32_entry_dir,
                seed,
                lambda n=n: sample_batched(inputs.sample, fp32_run, n, ev.batch_size, requested=per_seed)[0],
            )
            for seed, n in zip(ev.seeds, noises)
        ]
    )
    fp32_seconds = time_first_batch(inputs.sample, fp32_run, noises[0], ev.batch_size, per_seed)
    noise = torch.cat(noises)
    quantized, q_seconds = sample_batched(inputs.sample, q_run, noise, ev.batch_size, chunk=ev.num_samples, requested=requested)
    context = {
        "device_fp32": str(device),
        "device_quantized": str(device),
        "device_requested": inputs.device,
        "torch_num_threads": torch.get_num_threads(),
        "timed_batch": min(ev.batch_size, ev.num_samples),
        "warm_up": "one untimed denoiser forward per model at the timed batch shape; CUDA synchronized",
    }
    if guide is not None:
        context["guidance_scale"] = guide.scale
        context["batched_guidance"] = guide.batched  # each model call carries the conditional and the null half
    seconds = {"perf/sample_s": q_seconds, "perf/sample_s_fp32": fp32_seconds}
    for name, baseline in inputs.baselines.items():  # e.g. the bf16 compiled FP32 model a GPU backend must beat
        seconds[f"perf/sample_s_{name}"] = baseline_s = time_first_batch(
            inputs.sample, on_device(baseline, device), noises[0], ev.batch_size, per_seed
        )
        seconds[f"perf/speedup_vs_{name}"] = baseline_s / q_seconds
    return Sampled(noise, fp32, quantized, seconds, context, requested)
