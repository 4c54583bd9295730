"""The experiment as plain stages: data -> FP32 model -> quantize -> sample -> evaluate -> log.

`run_experiment(cfg)` needs no Hydra: tests and notebooks call it with a `Config` object.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffquant.artifacts import get_classifier, get_fp32_model
from diffquant.config import Config
from diffquant.data.datasets import iterate_batches, load_dataset
from diffquant.diffusion.samplers import get_sampler
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.eval_stage import EvalInputs, evaluate_and_report
from diffquant.features import require_extractor
from diffquant.quant.calibration import collect_trajectory
from diffquant.quant.engine import resolve_reduce_range, set_engine
from diffquant.quant.size import state_dict_bytes
from diffquant.quant.strategies import QuantContext, make_strategy
from diffquant.tb import RunLogger
from diffquant.training import TrainSettings


def run_experiment(cfg: Config) -> dict[str, Any]:
    """Run every stage for one configuration; return the results dict also written to results.json."""
    log = logging.getLogger("diffquant")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    q = cfg.quant
    set_engine(cfg.backend.engine)  # inside every job: sweep workers are reused
    reduce_range = resolve_reduce_range(cfg.backend.engine, cfg.backend.reduce_range)
    spec = q.spec(reduce_range=reduce_range)
    qat_settings = TrainSettings(steps=q.qat.steps, lr=q.qat.lr, log_every=cfg.train.log_every)
    strategy = make_strategy(q.method, spec, q.skip, qat_settings, q.qat.freeze_observer_step)
    require_extractor(cfg.eval.fid.extractor)  # a missing optional extra fails before any training
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
        num_steps = cfg.diffusion.num_timesteps if cfg.sampler.name == "ddpm" else cfg.sampler.steps
        calib_noise = torch.randn((q.calib.num_samples, data.channels, data.image_size, data.image_size),
                                  generator=torch.Generator().manual_seed(cfg.seed + 1))
        ctx = QuantContext(
            calibration=lambda: collect_trajectory(partial(sample, fp32.model), num_steps, q.calib.timesteps, calib_noise),
            train_batches=lambda: iterate_batches(data.train_images, q.qat.batch_size, torch.Generator().manual_seed(cfg.seed + 2)),
            diffusion=diffusion, generator=torch.Generator().manual_seed(cfg.seed + 3),
            calib_batch_size=q.calib.batch_size, log_scalar=logger.scalar, progress=cfg.progress,
        )
        log.info("Quantizing: method=%s W%dA%d engine=%s", q.method, q.weight_bits, q.act_bits, cfg.backend.engine)
        outcome = strategy.quantize(fp32.model, ctx)
        log.info("Execution: %s (%d layers wrapped, %.1f s)", outcome.execution, len(outcome.wrapped_layers), outcome.seconds)

        bits = (q.weight_bits, q.act_bits) if q.method != "fp32" else (32, 32)
        header = {"method": q.method, "weight_bits": bits[0], "act_bits": bits[1], "backend": cfg.backend.engine,
                  "execution": outcome.execution, "reduce_range": reduce_range}
        extra = {"fp32_cache_key": fp32.key, "fp32_cached": fp32.cached, "wrapped_layers": len(outcome.wrapped_layers),
                 "fused_groups": outcome.fused_groups}
        model_metrics = {"model/size_bytes": state_dict_bytes(outcome.model), "model/size_bytes_fp32": state_dict_bytes(fp32.model),
                         "perf/quantize_s": outcome.seconds}
        inputs = EvalInputs(data, diffusion, sample, fp32.model, fp32.entry_dir, outcome.model, outcome.execution,
                            classifier, cls_acc)
        return evaluate_and_report(cfg, inputs, header, model_metrics, extra, logger)
    finally:
        logger.close()
