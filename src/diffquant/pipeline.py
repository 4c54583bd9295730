"""The experiment as plain stages: data -> FP32 model -> quantize -> sample -> evaluate -> log.

`run_experiment(cfg)` needs no Hydra: tests and notebooks call it with a `Config` object.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffquant.cache.artifacts import get_classifier, get_fp32_model
from diffquant.cache.lock import cache_lock
from diffquant.cache.store import atomic_torch_save, atomic_write_text, config_hash, file_key, load_if_readable
from diffquant.config import BackendConfig, Config, QuantConfig
from diffquant.data.datasets import iterate_batches, iterate_labelled
from diffquant.data.loading import load_data
from diffquant.diffusion.config import SamplerConfig, build_diffusion, build_sampler
from diffquant.diffusion.guidance import Guide, guide_for
from diffquant.evaluation.compare import on_device
from diffquant.evaluation.features import require_extractor
from diffquant.evaluation.sampling import EvalInputs
from diffquant.evaluation.stage import evaluate_and_report
from diffquant.quant.api import RECIPE_ATTR, Run, make_strategy, quantize_with
from diffquant.quant.calibration import CalibrationData, Conditions, trajectory_pairs
from diffquant.quant.coverage import mac_fraction
from diffquant.quant.engine import Int8Numerics, resolve_int8_numerics, set_engine
from diffquant.quant.gpu.runtime import is_gpu_engine, require_gpu
from diffquant.quant.lowrank import branch_cost
from diffquant.quant.machine import cpu_info
from diffquant.quant.methods import Strategy
from diffquant.quant.plan import QuantContext
from diffquant.quant.saving import SavedRun, save
from diffquant.quant.size import packed_bytes, state_dict_bytes
from diffquant.reporting.record import RunRecord
from diffquant.reporting.results import save_figure, sensitivity_figure, source_provenance
from diffquant.reporting.tensorboard import RunLogger
from diffquant.training.distributed import DistInfo

# executions whose weights `packed_bytes` describes (the GPU backends report their converted weights' own bytes)
PACKED_EXECUTIONS = ("fakequant", "int8", "int8_inductor")

# `quant` settings added after QAT state keys were pinned: left out of the key at their defaults
QUANT_ADDED_LATER = (
    "weight_format",
    "act_format",
    "group_size",
    "smooth_alpha",
    "rotate",
    "gptq",
    "lowrank_rank",
    "act_timestep_groups",
    "size_budget_bytes",
    "avg_weight_bits",
    "mixed",
    "preset",
)


def run_experiment(cfg: Config) -> dict[str, Any]:
    """Run every stage for one configuration; return the results dict also written to results.json."""
    log = logging.getLogger("diffquant")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = SavedRun.read(cfg.quant.load) if cfg.quant.load else None
    if saved is not None:  # the file's recipe is the run's quant and backend groups
        cfg = dataclasses.replace(cfg, quant=saved.quant, backend=saved.backend)
    q = cfg.quant
    if saved is not None and is_gpu_engine(cfg.backend.engine):
        require_gpu(cfg.backend.engine, cfg.device)  # a GPU model file is evaluated on the GPU it was made for
    set_engine(cfg.backend.engine)  # inside every job: sweep workers are reused
    numerics = resolve_int8_numerics(cfg.backend.engine, cfg.backend.int8_scheme)
    strategy = build_strategy(cfg, numerics) if saved is None else None
    require_extractor(cfg.eval.fid.extractor)  # a missing optional extra fails before any training
    torch.manual_seed(cfg.seed)

    data = load_data(cfg.dataset, cfg.seed)  # validated: float [N, C, S, S] in [-1, 1]
    log.info(
        "Data %s (%s): %d train / %d held-out images of %dx%dx%d",
        cfg.dataset.name,
        cfg.dataset.target,
        len(data.train_images),
        len(data.test_images),
        data.channels,
        data.image_size,
        data.image_size,
    )
    diffusion = build_diffusion(cfg.diffusion)
    is_main = DistInfo.from_env().is_main
    logger = RunLogger(out_dir / "tensorboard", cfg.logger.tensorboard and is_main)
    try:
        fp32 = get_fp32_model(cfg, data, diffusion, logger)
        if not is_main:  # torchrun: the other ranks only helped train the FP32 model
            return {}
        if fp32.cached:
            for step, loss in enumerate(fp32.losses):
                if step % cfg.train.log_every == 0:
                    logger.scalar("train/loss", loss, step)
        classifier, cls_acc, _ = get_classifier(cfg, data)
        sample = build_sampler(cfg.sampler, diffusion)
        guide = guide_for(fp32.model, cfg.sampler.guidance_scale)
        if guide is not None:
            log.info("Conditional model (%s); sampler.guidance_scale=%g", conditioning_label(guide), guide.scale)
        device = torch.device(cfg.device)  # the FP32 trajectories of calibration run there (a copy: fp32.model stays put)
        calib_model = fp32.model if device.type == "cpu" else on_device(copy.deepcopy(fp32.model), device)
        conditions = None if guide is None else Conditions(calib_model, guide, guide.requested(q.calib.num_samples))
        calibration = CachedCalibration(
            cfg, fp32.entry_dir, sample if guide else partial(sample, calib_model), data.channels, data.image_size, conditions
        )
        batch_generator = torch.Generator().manual_seed(cfg.seed + 2)
        zeros = (torch.zeros(2, data.channels, data.image_size, data.image_size), torch.tensor([0, 1]))
        state_key = qat_key(cfg.quant, cfg.backend, cfg.sampler, cfg.seed, fp32.key)
        ctx = QuantContext(
            calibration=calibration.get,
            train_batches=lambda: (
                iterate_batches(data.train_images, q.qat.batch_size, batch_generator)
                if guide is None
                else iterate_labelled(data.train_images, data.train_labels, q.qat.batch_size, batch_generator)
            ),
            diffusion=diffusion,
            generator=torch.Generator().manual_seed(cfg.seed + 3),
            calib_batch_size=q.calib.batch_size,
            log_scalar=logger.scalar,
            progress=cfg.progress,
            batch_generator=batch_generator,
            state_path=fp32.entry_dir / f"qat_state_{state_key}.pt",
            state_key=state_key,
            checkpoint_every=q.qat.checkpoint_every,
            example=zeros if guide is None else guide.example(*zeros),
            conditioning=None if guide is None else (guide, cfg.train.cond_dropout),
        )
        log.info("Quantizing: method=%s W%dA%d engine=%s", q.method, q.weight_bits, q.act_bits, cfg.backend.engine)
        if saved is not None:
            log.info("Loading the quantized model from %s (quant.load; no quantization)", saved.path)
            outcome = saved.outcome(fp32.key)
        else:
            outcome = quantize_with(strategy, fp32.model, ctx, q, cfg.backend, numerics)
        if q.save and saved is None and outcome.model is not fp32.model:
            getattr(outcome.model, RECIPE_ATTR)["fp32_key"] = fp32.key
            log.info("Saved the quantized model to %s", save(outcome.model, out_dir / "quantized.pt"))
        log.info("Execution: %s (%d layers wrapped, %.1f s)", outcome.execution, len(outcome.wrapped_layers), outcome.seconds)

        if outcome.sensitivity:
            write_sensitivity(outcome.sensitivity, out_dir, logger)
        bits = (q.weight_bits, q.act_bits) if q.method != "fp32" else (32, 32)
        example = tuple(part[:1] for part in ctx.example)
        share = mac_fraction(fp32.model, outcome.wrapped_layers, *example) if outcome.wrapped_layers else 0.0
        branch = branch_cost(outcome.model, fp32.model, *example)
        if branch is not None:
            log.info(branch.summary())
        packed = None
        if outcome.execution in PACKED_EXECUTIONS and outcome.wrapped_layers:
            widths = [*outcome.mixed_precision.get("layer_bits", {}).items(), *q.layer_bits.items()]
            extra = 0 if branch is None else 4 * int(branch.params)  # float32, as they run here (and as budgets count them)
            packed = packed_bytes(
                fp32.model, outcome.wrapped_layers, q.weight_bits, q.weight_format, q.granularity, q.group_size, widths, extra
            )
        record = RunRecord(
            method=q.method,
            weight_bits=bits[0],
            act_bits=bits[1],
            backend=cfg.backend.engine,
            execution=outcome.execution,
            **numerics.as_dict(),
            weight_symmetric=q.weight_symmetric(numerics.scheme),
            size_bytes=state_dict_bytes(outcome.model),
            size_bytes_fp32=state_dict_bytes(fp32.model),
            quantize_s=outcome.seconds,
            quantized_mac_fraction=share,
            int8_mac_fraction=share if outcome.execution.startswith("int8") else 0.0,
            compile_s=outcome.compile_seconds or None,  # 0: not compiled, no perf/compile_s
            lowrank=None if branch is None else branch.metrics(),
            timestep_scales=outcome.timestep_scales or None,
            mixed_precision=outcome.mixed_precision or None,
            packed_bytes=packed,
            fp32_cache_key=fp32.key,
            fp32_cached=fp32.cached,
            wrapped_layers=list(outcome.wrapped_layers),
            float_layers=dict(outcome.float_layers),
            fused_groups=outcome.fused_groups,
            quant=dataclasses.asdict(q),
            provenance={
                **source_provenance(),
                "machine": cpu_info().as_dict(),
                "config_hash": config_hash(
                    {**dataclasses.asdict(cfg), "sampler": cfg.sampler.key(), "diffusion": cfg.diffusion.key()}
                ),
                "fp32_checkpoint_sha256": file_sha256(fp32.entry_dir / "model.pt", cfg.model.checkpoint),
            },
        )
        inputs = EvalInputs(
            data,
            diffusion,
            sample,
            fp32.model,
            fp32.entry_dir,
            outcome.model,
            outcome.execution,
            classifier,
            cls_acc,
            cfg.device,
            guide,
            outcome.baselines,
        )
        return evaluate_and_report(cfg, inputs, record, logger)
    finally:
        logger.close()


def conditioning_label(guide: Guide) -> str:
    """`10 classes` or `embeddings (77, 64)` for the log."""
    return f"{guide.num_classes} classes" if guide.num_classes else f"embeddings {tuple(guide.null.shape)}"


def qat_key(quant: QuantConfig, backend: BackendConfig, sampler: SamplerConfig, seed: int, fp32_key: str) -> str:
    """Hash of everything a QAT run's fine-tuned state depends on (its resumable checkpoint's key)."""
    parts = {
        "fp32": fp32_key,
        "quant": dataclasses.asdict(quant),
        "backend": backend.key(),
        "sampler": sampler.key(),
        "seed": seed,
    }
    parts["quant"]["qat"].pop("checkpoint_every")  # how often to save does not change the result
    defaults = dataclasses.asdict(QuantConfig())  # nested groups (gptq) as the dicts `parts` holds
    for key in QUANT_ADDED_LATER:  # keys of runs that do not use these settings stay as they were before them
        if parts["quant"][key] == defaults[key]:
            parts["quant"].pop(key)
    for key in ("save", "load", "preset"):  # whether the result is written or read; which preset named the recipe
        parts["quant"].pop(key, None)  # (the recipe's own settings are in the key: a preset and its command line share a state)
    return config_hash(parts)


def file_sha256(cached: Path, given: str | None) -> str:
    """SHA-256 of the FP32 checkpoint the run used (a given `model.checkpoint`, else the cache entry)."""
    path = Path(given) if given else cached
    return file_key(path, length=64) if path.is_file() else "unknown"


def build_strategy(cfg: Config, numerics: Int8Numerics) -> Strategy:
    """The strategy of `quant._target_` for this run (built before any training, so bad settings fail first)."""
    run = Run(warmup=min(cfg.eval.batch_size, cfg.eval.num_samples), device=cfg.device, log_every=cfg.train.log_every)
    return make_strategy(cfg.quant, cfg.backend, numerics, run)


class CachedCalibration:
    """(x_t, t[, cond]) pairs from the FP32 trajectory, built once and cached per FP32 model, sampler and calib setting."""

    def __init__(
        self, cfg: Config, entry_dir: Path, sample: Any, channels: int, image_size: int, conditions: Conditions | None = None
    ) -> None:
        """`sample(noise=, callback=)` runs the FP32 model; with `conditions`, `sample(model, noise=, callback=)`."""
        c = cfg.quant.calib
        self.path = entry_dir / "calib_{}.pt".format(
            config_hash({"calib": dataclasses.asdict(c), "sampler": cfg.sampler.key(), "seed": cfg.seed})
        )
        self.cfg, self.sample, self.conditions, self.shape = cfg, sample, conditions, (channels, image_size, image_size)
        self.data: CalibrationData | None = None

    def get(self) -> CalibrationData:
        if self.data is None:
            with cache_lock(self.path, "calibration pairs"):
                self.data = self._load() or self._build()
        return self.data

    def _load(self) -> CalibrationData | None:
        blob = load_if_readable(self.path, "calibration pairs")
        return None if blob is None else CalibrationData.from_blob(blob)

    def _build(self) -> CalibrationData:
        cfg = self.cfg
        T = cfg.diffusion.num_timesteps
        data = trajectory_pairs(self.sample, cfg.sampler.timesteps(T), cfg.quant.calib, T, self.shape, cfg.seed, self.conditions)
        atomic_torch_save(data.to_blob(), self.path)
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
