"""The evaluation stage of a run: sample from identical noise, measure, log to TensorBoard, save results.

`evaluate_and_report` takes the FP32 and the quantized model and writes everything a person looks
at: results.json (metrics and the evaluation protocol), the PNG figures and the TensorBoard run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffquant.config import Config
from diffquant.diffusion.guidance import Guide
from diffquant.evaluation.compare import (
    EpsProbe,
    eps_errors,
    eval_device,
    finite_or_none,
    on_device,
    sample_features,
    sample_metrics,
)
from diffquant.evaluation.conditional import class_accuracy_metrics
from diffquant.evaluation.features import build_spaces, images_fingerprint, reference_statistics
from diffquant.evaluation.figures import save_run_figures
from diffquant.evaluation.protocol import eval_protocol
from diffquant.evaluation.sampling import EvalInputs, sample_both
from diffquant.evaluation.trajectory import mean_over_steps, trajectory_eps_mse
from diffquant.evaluation.uncertainty import (
    BOOTSTRAP_FILE,
    bootstrap_seed,
    floor_images,
    floor_metrics,
    paired_metrics,
    write_bootstrap,
)
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.inspect import activation_ranges, layer_inputs
from diffquant.reporting.dashboards import hparams_of, log_run
from diffquant.reporting.record import RunRecord
from diffquant.reporting.results import write_results
from diffquant.reporting.tensorboard import RunLogger


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

    label, n = record.label(), ev.grid_images
    class_guide = inputs.guide if sampled.requested is not None else None
    images = {"real": data.test_images, "fp32": fp32_samples, "quantized": q_samples}
    save_run_figures(out_dir, label, images, n, eps_per_t, traj, ranges, class_guide)
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
