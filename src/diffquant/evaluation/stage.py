"""The evaluation stage of a run: sample from identical noise, measure, log to TensorBoard, save results.

`evaluate_and_report` takes the FP32 and the quantized model and writes everything a person looks
at: results.json (metrics and the evaluation protocol), the PNG figures and the TensorBoard run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.cache.lock import cache_lock
from diffquant.cache.store import atomic_torch_save, config_hash, load_if_readable
from diffquant.config import Config, EvalConfig
from diffquant.data.datasets import DataSplit
from diffquant.diffusion.config import DiffusionConfig, SamplerConfig
from diffquant.diffusion.guidance import Guide
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.evaluation.compare import (
    EpsProbe,
    Requested,
    eps_errors,
    eval_device,
    finite_or_none,
    on_device,
    sample_batched,
    sample_features,
    sample_metrics,
    time_first_batch,
)
from diffquant.evaluation.conditional import class_accuracy_metrics, requested_labels
from diffquant.evaluation.features import build_spaces, images_fingerprint, reference_statistics
from diffquant.evaluation.protocol import eval_protocol
from diffquant.evaluation.trajectory import mean_over_steps, trajectory_eps_mse
from diffquant.evaluation.uncertainty import (
    BOOTSTRAP_FILE,
    bootstrap_seed,
    floor_images,
    floor_metrics,
    paired_metrics,
    write_bootstrap,
)
from diffquant.metrics.classifier import DigitClassifier
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.inspect import activation_ranges, layer_inputs
from diffquant.reporting.dashboards import hparams_of, log_run
from diffquant.reporting.record import RunRecord
from diffquant.reporting.results import (
    save_class_grid,
    save_comparison_grid,
    save_curves,
    save_eps_plot,
    save_range_plot,
    write_results,
)
from diffquant.reporting.tensorboard import RunLogger


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


def evaluate_and_report(
    cfg: Config,
    inputs: EvalInputs,
    record: RunRecord,
    logger: RunLogger,
) -> dict[str, Any]:
    """Sample, compute every metric, log to TensorBoard, save figures and results.json; return the results."""
    log = logging.getLogger("diffquant")
    ev, data, out_dir = cfg.eval, inputs.data, Path(cfg.paths.output_dir)
    compare = inputs.execution != "fp32"
    device = eval_device(inputs.device, inputs.execution)
    fp32_run, q_run = on_device(inputs.fp32_model, device), on_device(inputs.q_model, device)
    if device.type != "cpu":
        log.info("Evaluating the FP32 and the %s model on %s", inputs.execution, device)
    elif inputs.device != "cpu":
        log.info(
            "device=%s, but %s execution runs CPU-only int8 kernels: the %s model is sampled on the CPU and the FP32 "
            "model on cpu too (perf/sample_s vs perf/sample_s_fp32 compare like with like)",
            inputs.device,
            inputs.execution,
            inputs.execution,
        )
    sampled = sample_both(ev, cfg.sampler, cfg.diffusion, inputs, fp32_run, q_run, device)
    fp32_samples, q_samples, noise = sampled.fp32, sampled.quantized, sampled.noise

    probe = EpsProbe.build(data.test_images[: ev.eps_num_images], inputs.diffusion, ev.eps_timesteps, ev.seeds[0])
    probe_cond = probe_conditions(inputs.guide, data.test_labels[: ev.eps_num_images])
    eps_fp32, eps_q = probe.predictions(fp32_run, probe_cond), probe.predictions(q_run, probe_cond)
    eps_rel, eps_per_t = eps_errors(eps_fp32, eps_q, probe.t)
    bind = None if sampled.requested is None else sampled.requested.bound
    traj = trajectory_eps_mse(inputs.sample, fp32_run, q_run, noise[: ev.traj_num_samples], ev.batch_size, bind)

    spaces = build_spaces(ev.fid.extractor, inputs.classifier, ev.fid.batch_size, cfg.progress)
    cache_dir, data_key = Path(cfg.paths.cache_dir), {"dataset": cfg.dataset.key(seed=cfg.seed), "seed": cfg.seed}
    refs = {s.name: reference_statistics(s, data.test_images, cache_dir, data_key)[0] for s in spaces}
    features = sample_features(spaces, fp32_samples, q_samples)
    seed = bootstrap_seed(list(ev.seeds))
    paired, deltas, digest = paired_metrics(
        spaces, refs, features, fp32_samples, q_samples, compare, ev.precision_recall_k, ev.bootstrap, seed
    )
    real = floor_images(data.train_images, ev.total_samples, ev.seeds[0])
    metrics = {
        **sample_metrics(spaces, refs, fp32_samples, q_samples, compare, ev.precision_recall_k, features),
        **paired,
        **floor_metrics(spaces, refs, real, cache_dir, data_key),
        "eval/eps_rel_err": finite_or_none(eps_rel),  # non-finite outputs are reported as null
        "eval/traj_eps_mse": mean_over_steps(traj),
        "eval/classifier_acc": inputs.classifier_acc,
        **(
            class_accuracy_metrics(inputs.classifier, fp32_samples, q_samples, sampled.requested.labels, ev.bootstrap, seed)
            if sampled.requested is not None
            else {}
        ),
        **record.model_metrics(),
        **sampled.seconds,
    }
    pairing = {
        "num_samples": ev.total_samples,
        "replicates": ev.bootstrap,
        "seed": seed,
        "eval_seeds": list(ev.seeds),
        "indices_sha256": digest,
        "fp32_samples_sha256": images_fingerprint(fp32_samples),
    }
    bootstrap = write_bootstrap(out_dir / BOOTSTRAP_FILE, deltas, pairing)
    protocol = eval_protocol(
        ev,
        cfg.sampler,
        cfg.diffusion,
        cfg.dataset,
        cfg.seed,
        spaces,
        int(data.test_images.shape[0]),
        inputs.classifier_acc,
        int(real.shape[0]),
        data.image_size,
    )
    probed = inputs.q_model.eager if isinstance(inputs.q_model, ScriptedInt8) else inputs.q_model  # hooks need Python
    ranges = activation_ranges(probed)
    probe_x, probe_t = probe.mixed_batch(ev.act_probe_images)
    probe_extra = () if inputs.guide is None else (inputs.guide.nulls(len(probe_t)),)
    with torch.no_grad():
        activations = layer_inputs(probed, lambda: on_device(probed, device)(probe_x, probe_t, *probe_extra))
    series = {
        "eval/eps_rel_err_by_t": eps_per_t,
        "eval/eps_loss_by_t": probe.loss_per_t(eps_q),
        "eval/eps_loss_by_t_fp32": probe.loss_per_t(eps_fp32),
        "eval/traj_eps_mse_by_t": traj,
    }

    label = record.label()
    n = ev.grid_images
    save_comparison_grid(
        {
            "real (held-out)": data.test_images[:n],
            "FP32": fp32_samples[:n],
            label: q_samples[:n],
            "|quantized − FP32| x4": (q_samples[:n] - fp32_samples[:n]).abs().mul(4).sub(1),
        },
        out_dir / "samples.png",
    )
    if sampled.requested is not None and inputs.guide is not None:
        k = inputs.guide.num_labels
        rows = max(1, n // k)
        save_class_grid(
            {"FP32": fp32_samples[: rows * k], label: q_samples[: rows * k]},
            k,
            out_dir / "samples_by_class.png",
            guide_note(inputs.guide),
        )
    save_eps_plot(eps_per_t, out_dir / "eps_rel_err.png", label)
    save_curves(
        {label: traj}, out_dir / "traj_eps_mse.png", "timestep t (along the quantized trajectory)", "MSE(ε_q, ε_fp32)", logy=True
    )
    if ranges:
        save_range_plot(ranges, out_dir / "act_ranges.png", label)
    log_run(
        logger,
        hparams_of(record.header(), cfg.quant, cfg.backend, cfg.model, cfg.dataset, cfg.sampler, ev),
        dataclasses.asdict(cfg),
        metrics,
        series,
        protocol,
        {"real": data.test_images[:n], "fp32": fp32_samples[:n], "quantized": q_samples[:n]},  # the grids' images
        {"fp32": inputs.fp32_model, "quantized": inputs.q_model} if cfg.logger.histograms else {},
        activations if cfg.logger.histograms else {},
        out_dir,
    )
    extra = {
        "protocol": protocol,
        "eps_rel_err_per_t": {str(t): v for t, v in eps_per_t.items()},
        "traj_eps_mse_per_t": {str(t): v for t, v in traj.items()},
        "activation_ranges": {k: list(v) for k, v in ranges.items()},
        **record.extra(),
        "bootstrap": bootstrap,
        "perf_context": sampled.context,
    }
    results = write_results(out_dir / "results.json", record.header(), metrics, extra)
    for space in spaces:
        log.info("%s", fid_line(metrics, space.short))
    psnr = metrics["eval/psnr_vs_fp32"]
    log.info(
        "eps_rel_err %.4f, psnr_vs_fp32 %s -> %s", eps_rel, "n/a" if psnr is None else f"{psnr:.1f} dB", out_dir / "results.json"
    )
    return results


def probe_conditions(guide: Guide | None, labels: Tensor) -> Tensor | None:
    """The ε probe's conditions: those of each held-out image's own label."""
    return None if guide is None else guide.from_labels(labels)


def guide_note(guide: Guide) -> str:
    """`guidance 3` or `no guidance` for figure titles."""
    return "no guidance" if not guide.batched else f"guidance scale {guide.scale:g}"


def fid_line(metrics: dict[str, Any], short: str) -> str:
    """`fid_cls 3.2 (FP32 3.0; delta +0.2 [0.1, 0.3]; floor 1.1)` for the log."""

    def num(key: str, fmt: str = ".3f") -> str:
        value = metrics.get(key)
        return "n/a" if value is None else format(value, fmt)

    ci = metrics.get(f"eval/fid_{short}_delta_ci95")
    interval = "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return (
        f"fid_{short} {num(f'eval/fid_{short}')} (FP32 {num(f'eval/fid_{short}_fp32')}; delta "
        f"{num(f'eval/fid_{short}_delta', '+.3f')}{interval}; real-vs-real floor {num(f'eval/fid_{short}_floor')})"
    )
