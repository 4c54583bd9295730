"""The experiment as plain stages: data -> FP32 model -> quantize -> sample -> evaluate -> log.

`run_experiment(cfg)` needs no Hydra: tests and notebooks call it with a `Config` object.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffquant.artifacts import file_key, get_classifier, get_fp32_model
from diffquant.cache import atomic_torch_save, atomic_write_text, config_hash
from diffquant.config import Config
from diffquant.data.datasets import iterate_batches, load_dataset
from diffquant.diffusion.samplers import ddim_timesteps, get_sampler
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.evaluation import EpsProbe, eps_errors, finite_or_none, sample_batched, sample_metrics, time_first_batch
from diffquant.quant.calibration import CalibrationData, collect_trajectory, pick_indices, pick_indices_normal
from diffquant.quant.engine import resolve_reduce_range, set_engine
from diffquant.quant.size import state_dict_bytes
from diffquant.quant.reconstruction import ReconSettings
from diffquant.quant.strategies import FP32Strategy, PTQStrategy, QATStrategy, QuantContext, QuantPlan
from diffquant.report import git_commit, save_comparison_grid, save_eps_plot, save_figure, sensitivity_figure, write_results
from diffquant.sweep.lock import cache_lock
from diffquant.tb import RunLogger, to_grid
from diffquant.training import TrainSettings


def run_experiment(cfg: Config) -> dict[str, Any]:
    """Run every stage for one configuration; return the results dict also written to results.json."""
    log = logging.getLogger("diffquant")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    q = cfg.quant
    set_engine(cfg.backend.engine)  # inside every job: sweep workers are reused
    reduce_range = resolve_reduce_range(cfg.backend.engine, cfg.backend.reduce_range)
    strategy = build_strategy(cfg, reduce_range)
    torch.manual_seed(cfg.seed)

    data = load_dataset(cfg.dataset.name, root=cfg.dataset.root, image_size=cfg.dataset.image_size,
                        channels=cfg.dataset.channels, download=cfg.dataset.download,
                        holdout_fraction=cfg.dataset.holdout_fraction, seed=cfg.seed, max_train=cfg.dataset.max_train)
    log.info("Data %s: %d train / %d held-out images of %dx%d", cfg.dataset.name, len(data.train_images),
             len(data.test_images), data.image_size, data.image_size)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion.schedule, cfg.diffusion.num_timesteps,
                                              cfg.diffusion.beta_start, cfg.diffusion.beta_end)
    logger = RunLogger(out_dir / "tensorboard", cfg.logger.tensorboard)
    try:
        fp32 = get_fp32_model(cfg, data, diffusion, logger)
        if fp32.cached:
            for step, loss in enumerate(fp32.losses):
                if step % cfg.train.log_every == 0:
                    logger.scalar("train/loss", loss, step)
        classifier, cls_acc, _ = get_classifier(cfg, data)
        sample = partial(get_sampler(cfg.sampler.name), diffusion=diffusion, steps=cfg.sampler.steps,
                         eta=cfg.sampler.eta, generator=None)
        calibration = CachedCalibration(cfg, fp32.entry_dir, partial(sample, fp32.model), data.channels, data.image_size)
        ctx = QuantContext(
            calibration=calibration.get,
            train_batches=lambda: iterate_batches(data.train_images, q.qat.batch_size, torch.Generator().manual_seed(cfg.seed + 2)),
            diffusion=diffusion, generator=torch.Generator().manual_seed(cfg.seed + 3),
            calib_batch_size=q.calib.batch_size, log_scalar=logger.scalar, progress=cfg.progress,
        )
        log.info("Quantizing: method=%s W%dA%d engine=%s", q.method, q.weight_bits, q.act_bits, cfg.backend.engine)
        outcome = strategy.quantize(fp32.model, ctx)
        log.info("Execution: %s (%d layers wrapped, %.1f s)", outcome.execution, len(outcome.wrapped_layers), outcome.seconds)

        ev = cfg.eval
        noise = torch.randn((ev.num_samples, data.channels, data.image_size, data.image_size),
                            generator=torch.Generator().manual_seed(ev.seed))
        fp32_samples = reference_samples(cfg, fp32.entry_dir, lambda: sample_batched(sample, fp32.model, noise, ev.batch_size)[0])
        fp32_seconds = time_first_batch(sample, fp32.model, noise, ev.batch_size)
        q_samples, q_seconds = sample_batched(sample, outcome.model, noise, ev.batch_size)

        probe = EpsProbe.build(data.test_images[: ev.eps_num_images], diffusion, ev.eps_timesteps, ev.seed)
        eps_rel, eps_per_t = eps_errors(probe.predictions(fp32.model), probe.predictions(outcome.model), probe.t)
        metrics = {
            **sample_metrics(classifier, data.test_images, fp32_samples, q_samples, compare=q.method != "fp32"),
            "eval/eps_rel_err": finite_or_none(eps_rel),  # non-finite outputs are reported as null
            "eval/classifier_acc": cls_acc,
            "model/size_bytes": state_dict_bytes(outcome.model),
            "model/size_bytes_fp32": state_dict_bytes(fp32.model),
            "perf/sample_s": q_seconds,
            "perf/sample_s_fp32": fp32_seconds,
            "perf/quantize_s": outcome.seconds,
        }
        log_run(logger, cfg, metrics, eps_per_t, data.test_images, fp32_samples, q_samples, fp32.model, outcome.model)
        save_comparison_grid({"real (held-out)": data.test_images[: ev.grid_images], "FP32": fp32_samples[: ev.grid_images],
                              f"{q.method} ({outcome.execution})": q_samples[: ev.grid_images]}, out_dir / "samples.png")
        if outcome.sensitivity:
            write_sensitivity(outcome.sensitivity, out_dir, logger)
        save_eps_plot(eps_per_t, out_dir / "eps_rel_err.png", f"{q.method} W{q.weight_bits}A{q.act_bits} {cfg.backend.engine}")
        bits = (q.weight_bits, q.act_bits) if q.method != "fp32" else (32, 32)
        header = {"method": q.method, "weight_bits": bits[0], "act_bits": bits[1], "backend": cfg.backend.engine,
                  "execution": outcome.execution, "reduce_range": reduce_range}
        extra = {"eps_rel_err_per_t": {str(t): v for t, v in eps_per_t.items()}, "fp32_cache_key": fp32.key,
                 "fp32_cached": fp32.cached, "wrapped_layers": len(outcome.wrapped_layers),
                 "fused_groups": outcome.fused_groups, "quant": dataclasses.asdict(q),
                 "provenance": {"git_commit": git_commit(), "config_hash": config_hash(dataclasses.asdict(cfg)),
                                "fp32_checkpoint_sha256": file_sha256(fp32.entry_dir / "model.pt", cfg.model.checkpoint)}}
        results = write_results(out_dir / "results.json", header, metrics, extra)
        log.info("fid_cls %.3f (FP32 %.3f), eps_rel_err %.4f, psnr_vs_fp32 %s -> %s", metrics["eval/fid_cls"] or float("nan"),
                 metrics["eval/fid_cls_fp32"], eps_rel, metrics["eval/psnr_vs_fp32"], out_dir / "results.json")
        return results
    finally:
        logger.close()


def file_sha256(cached: Path, given: str | None) -> str:
    """SHA-256 of the FP32 checkpoint the run used (a given `model.checkpoint`, else the cache entry)."""
    path = Path(given) if given else cached
    return file_key(path, length=64) if path.is_file() else "unknown"


def build_strategy(cfg: Config, reduce_range: bool) -> FP32Strategy | PTQStrategy | QATStrategy:
    """Translate the `quant` group into a strategy object (the one place that maps a method name to code)."""
    q, r, t = cfg.quant, cfg.quant.recon, cfg.quant.qat
    plan = QuantPlan(q.spec(reduce_range=reduce_range), tuple(q.skip), tuple(q.layer_bits.items()), q.split_shortcut,
                     q.dynamic_input)
    recon = None if r.method == "none" else ReconSettings(r.method, r.iters, r.lr, r.batch_size, r.reg_weight, tuple(r.block_types))
    qat_settings = TrainSettings(steps=t.steps, lr=t.lr, warmup_steps=t.warmup_steps, ema_decay=t.ema_decay,
                                 log_every=cfg.train.log_every, schedule=t.schedule)
    builders = {
        "fp32": FP32Strategy,
        "ptq": lambda: PTQStrategy(plan, recon, r.num_samples, q.sensitivity),
        "qat": lambda: QATStrategy(plan, qat_settings, t.freeze_observer_step, t.data_weight, t.distill_weight,
                                   t.data_free, t.init_from_ptq, t.batch_size),
    }
    return builders[q.method]()


class CachedCalibration:
    """(x_t, t) pairs from the FP32 trajectory, built once and cached per FP32 model, sampler and calib setting."""

    def __init__(self, cfg: Config, entry_dir: Path, sample: Any, channels: int, image_size: int) -> None:
        c = cfg.quant.calib
        self.path = entry_dir / "calib_{}.pt".format(config_hash({
            "calib": dataclasses.asdict(c), "sampler": dataclasses.asdict(cfg.sampler), "seed": cfg.seed}))
        self.cfg, self.sample, self.shape = cfg, sample, (c.num_samples, channels, image_size, image_size)
        self.data: CalibrationData | None = None

    def get(self) -> CalibrationData:
        if self.data is None:
            with cache_lock(self.path, "calibration pairs"):
                self.data = self._load() or self._build()
        return self.data

    def _load(self) -> CalibrationData | None:
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu")
            logging.getLogger("diffquant").info("Reusing cached calibration pairs %s", self.path)
            return CalibrationData(blob["x"], blob["t"])
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never trusted
            logging.getLogger("diffquant").warning("Cached calibration pairs %s are unreadable; rebuilding", self.path)
            return None

    def _build(self) -> CalibrationData:
        cfg, c = self.cfg, self.cfg.quant.calib
        T = cfg.diffusion.num_timesteps
        steps = list(range(T - 1, -1, -1)) if cfg.sampler.name == "ddpm" else ddim_timesteps(T, cfg.sampler.steps)
        keep = (pick_indices(len(steps), c.timesteps) if c.t_sampling == "uniform"
                else pick_indices_normal(steps, c.timesteps, c.t_mean, c.t_std, T, seed=cfg.seed))
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(cfg.seed + 1))
        data = collect_trajectory(self.sample, len(steps), c.timesteps, noise, keep)
        atomic_torch_save({"x": data.x, "t": data.t}, self.path)
        return data


def write_sensitivity(rows: list[dict[str, Any]], out_dir: Path, logger: RunLogger) -> None:
    """sensitivity.csv and sensitivity.png in the run dir, and the figure in TensorBoard."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buffer.getvalue(), out_dir / "sensitivity.csv")
    fig = sensitivity_figure(rows)
    logger.figure("quant/sensitivity", fig)
    save_figure(fig, out_dir / "sensitivity.png")


def reference_samples(cfg: Config, entry_dir: Path, make: Any) -> torch.Tensor:
    """FP32 samples from the evaluation noise, cached next to the FP32 checkpoint per sampler and eval setting."""
    key = config_hash({"sampler": dataclasses.asdict(cfg.sampler), "diffusion": dataclasses.asdict(cfg.diffusion),
                       "n": cfg.eval.num_samples, "seed": cfg.eval.seed})
    path = entry_dir / f"samples_{key}.pt"
    with cache_lock(path, "FP32 reference samples"):
        if path.is_file():
            try:
                logging.getLogger("diffquant").info("Reusing cached FP32 reference samples %s", path)
                return torch.load(path, map_location="cpu")
            except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never trusted
                logging.getLogger("diffquant").warning("Cached FP32 samples %s are unreadable; rebuilding", path)
        samples = make()
        atomic_torch_save(samples, path)
        return samples


def log_run(logger: RunLogger, cfg: Config, metrics: dict[str, Any], eps_per_t: dict[int, float],
            real: torch.Tensor, fp32_samples: torch.Tensor, q_samples: torch.Tensor, fp32_model: Any, q_model: Any) -> None:
    """Everything TensorBoard shows for a run: metrics, per-t error, grids, histograms, HParams, config."""
    from omegaconf import OmegaConf

    logger.scalars(metrics)
    for t, value in eps_per_t.items():
        logger.scalar("eval/eps_rel_err_by_t", value, t)
    n = cfg.eval.grid_images
    for tag, images in (("real", real), ("fp32", fp32_samples), ("quantized", q_samples)):
        logger.image(f"samples/{tag}", to_grid(images[:n]))
    logger.image("samples/abs_diff_x4", to_grid((q_samples[:n] - fp32_samples[:n]).abs().mul(4).sub(1)))
    if cfg.logger.histograms:
        logger.histograms(fp32_model, "weights_fp32")
        logger.histograms(q_model, "weights_quantized")
    q = cfg.quant
    logger.hparams({"method": q.method, "weight_bits": q.weight_bits, "act_bits": q.act_bits, "backend": cfg.backend.engine,
                    "granularity": q.granularity, "symmetric": q.symmetric, "observer": q.observer,
                    "calib_timesteps": q.calib.timesteps, "model": cfg.model.name, "dataset": cfg.dataset.name,
                    "sampler": f"{cfg.sampler.name}{cfg.sampler.steps}"}, metrics)
    logger.text("config", "```\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg)) + "\n```")
