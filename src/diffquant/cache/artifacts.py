"""Cached artefacts shared by runs: the FP32 model, the feature classifier, FP32 reference samples.

Each entry lives under `<cache_dir>/<kind>/<hash>/` where the hash covers everything that
determines it, so a sweep over quantization settings trains the FP32 model once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffquant.cache.bundled import bundled_model, install_bundled
from diffquant.cache.lock import cache_lock
from diffquant.cache.store import atomic_torch_save, config_hash, file_key, load_checkpoint, load_or_none
from diffquant.components import Component
from diffquant.config import Config, TrainConfig
from diffquant.data.datasets import DataSplit, iterate_batches, iterate_labelled
from diffquant.diffusion.config import DiffusionConfig
from diffquant.diffusion.guidance import Guide, guide_for
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError
from diffquant.metrics.classifier import DigitClassifier, accuracy, train_classifier
from diffquant.models import build_model, probe_model, weights_key
from diffquant.reporting.tensorboard import RunLogger
from diffquant.training.checkpoint import Checkpointer
from diffquant.training.distributed import DistInfo, check_replicas_equal, peer_failure, state_digest
from diffquant.training.loop import TrainSettings, conditional_epsilon_loss, epsilon_loss, train_diffusion


@dataclasses.dataclass
class FP32Artifact:
    """The FP32 (EMA) model, the key of its cache entry, and its training loss history."""

    model: nn.Module
    key: str
    entry_dir: Path
    cached: bool
    losses: list[float]


def fp32_key(
    model: Component,
    dataset: Component,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    seed: int,
    in_channels: int,
    image_size: int,
    conditional: bool = False,
) -> str:
    """Hash of everything that determines the trained FP32 weights."""
    return config_hash(fp32_key_parts(model, dataset, diffusion, train, seed, in_channels, image_size, conditional))


def fp32_key_parts(
    model: Component,
    dataset: Component,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    seed: int,
    in_channels: int,
    image_size: int,
    conditional: bool = False,
) -> dict[str, Any]:
    """The settings that determine the trained FP32 weights (stored in the cache entry beside their hash).

    A model or data set enters as its `_target_` import path and the arguments actually passed to
    it, so two user models never share an entry and keys the target ignores do not split one; an
    argument naming a file adds the file's digest (a changed `model.conditions` file retrains). The
    schedule enters as its settings, plus its import path when it is not the built-in of its name.
    """
    parts: dict[str, Any] = {"diffusion": diffusion.key(), "train": dataclasses.asdict(train)}
    parts["model"] = model.key(in_channels=in_channels, image_size=image_size)
    if parts["model"].get("num_classes") == 0:  # unconditional: the key it had before models took classes
        parts["model"].pop("num_classes")
    for name, value in list(parts["model"].items()):  # a file the model reads (model.conditions) enters by content
        if isinstance(value, str) and Path(value).expanduser().is_file():
            parts["model"][f"{name}_sha256"] = file_key(Path(value).expanduser())
    parts["dataset"] = dataset.key(seed=seed)
    parts["train"].pop("checkpoint_every")  # how often to save does not change the weights
    parts["train"].pop("bundled")  # a bundled model is the one this config trains
    if not conditional:  # an unconditional model never drops a condition (and its keys predate the setting)
        parts["train"].pop("cond_dropout")
    parts["seed"] = seed
    return parts


def get_fp32_model(cfg: Config, data: DataSplit, diffusion: GaussianDiffusion, logger: RunLogger) -> FP32Artifact:
    """Load `model.checkpoint`, or the cached FP32 model, or train it and cache it."""
    log = logging.getLogger("diffquant")
    model = build_model(cfg.model, data.channels, data.image_size)
    probe_model(model, cfg.model.target, data.channels, data.image_size)  # before any training or cache write
    guide = guide_for(model, cfg.sampler.guidance_scale)
    if guide is not None and guide.num_classes:
        guide.check(torch.cat([data.train_labels, data.test_labels]), f"dataset={cfg.dataset.name}")
    if cfg.model.checkpoint:
        ckpt = load_checkpoint(cfg.model.checkpoint, "model.checkpoint")
        key = "ckpt-" + file_key(cfg.model.checkpoint)
        log.info("Using the FP32 checkpoint model.checkpoint=%s", cfg.model.checkpoint)
        _load_state(model, ckpt, "model.checkpoint")
        return FP32Artifact(model.eval(), key, Path(cfg.paths.cache_dir) / "fp32" / key, True, ckpt.get("losses", []))
    pretrained = cfg.model.kwargs.get("pretrained")
    if pretrained:  # the factory loaded the weights (diffusers from_pretrained): no training
        key = weights_key(model)
        log.info("Using the pretrained FP32 model model.pretrained=%s", pretrained)
        return FP32Artifact(model.eval(), key, Path(cfg.paths.cache_dir) / "fp32" / key, True, [])
    recipe = (cfg.model, cfg.dataset, cfg.diffusion, cfg.train, cfg.seed, data.channels, data.image_size, guide is not None)
    key = fp32_key(*recipe)
    entry = Path(cfg.paths.cache_dir) / "fp32" / key
    path = entry / "model.pt"
    info = DistInfo.from_env()
    # Concurrent sweep jobs: one trains, the others wait and load. Under torchrun the ranks train
    # together, so only rank 0 holds the lock (the others would wait on it forever).
    with cache_lock(path, "FP32 model") if info.is_main else contextlib.nullcontext():
        ckpt = load_cache_entry(path, key)
        if ckpt is not None:
            _load_state(model, ckpt, "paths.cache_dir")
            log.info("Reusing the cached FP32 model %s (no training)", path)
            return FP32Artifact(model.eval(), key, entry, True, ckpt.get("losses", []))
        bundled = bundled_model(key) if cfg.train.bundled else None
        if bundled is not None and info.is_main:
            install_bundled(bundled, path)
            ckpt = load_cache_entry(path, key)
            if ckpt is not None:
                _load_state(model, ckpt, "the bundled FP32 model")
                log.info(
                    "Using the bundled FP32 model %s for this configuration (no training; train.bundled=false trains)",
                    bundled.name,
                )
                return FP32Artifact(model.eval(), key, entry, True, ckpt.get("losses", []))
        state_path = entry / "train_state.pt"
        run = TrainRun(cfg.model, cfg.train, cfg.seed, cfg.device, cfg.progress, guide)
        ema, losses = _train_fp32(run, data, diffusion, logger, key, state_path, info)
        if info.is_main:
            atomic_torch_save(
                cache_blob(
                    ema.state_dict(),
                    key,
                    model_config=cfg.model.key(in_channels=data.channels, image_size=data.image_size),
                    losses=losses,
                    config=fp32_key_parts(*recipe),
                ),
                path,
            )
            state_path.unlink(missing_ok=True)  # the finished model replaces the resumable state
        return FP32Artifact(ema.eval(), key, entry, False, losses)


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """The settings FP32 training reads: the model, the `train` group, the run's seed, device and progress bar."""

    model: Component
    train: TrainConfig
    seed: int
    device: str
    progress: bool
    guide: Guide | None = None  # a conditional model's: batches carry labels, dropped with train.cond_dropout


def _train_fp32(
    run: TrainRun, data: DataSplit, diffusion: GaussianDiffusion, logger: RunLogger, key: str, state_path: Path, info: DistInfo
) -> tuple[nn.Module, list[float]]:
    """Train the FP32 model from `run.seed` (resumably in one process; data-parallel under torchrun)."""
    log = logging.getLogger("diffquant")
    t = run.train
    log.info(
        "Training the FP32 model for %d steps (cache entry %s%s)",
        t.steps,
        state_path.parent,
        f", {info.world_size} processes x {t.batch_size} images" if info.enabled else "",
    )
    generator = torch.Generator().manual_seed(run.seed + 7919 * info.rank)  # each rank draws its own batches
    torch.manual_seed(run.seed)  # identical initial weights on every rank
    model = build_model(run.model, data.channels, data.image_size)
    settings = TrainSettings(
        steps=t.steps,
        lr=t.lr,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        warmup_steps=t.warmup_steps,
        ema_decay=t.ema_decay,
        log_every=t.log_every,
        device=info.device(run.device),
        bf16=t.bf16,
    )
    if run.guide is None:
        batches, loss_fn = iterate_batches(data.train_images, t.batch_size, generator), epsilon_loss(diffusion, generator)
    else:
        batches = iterate_labelled(data.train_images, data.train_labels, t.batch_size, generator)
        loss_fn = conditional_epsilon_loss(diffusion, generator, run.guide, t.cond_dropout)
    checkpointer = (
        Checkpointer(state_path, key, t.checkpoint_every, {"data": generator}) if not info.enabled else None
    )  # resume is per process; a torchrun job restarts from step 0
    if info.enabled and info.is_main:
        log.info("torchrun: resumable checkpoints are off (resuming is per process); an interrupted job trains again from step 0")
    try:
        ema, losses = train_diffusion(
            model,
            loss_fn,
            batches,
            settings,
            log_scalar=logger.scalar,
            progress=run.progress and info.is_main,
            checkpointer=checkpointer,
        )
    except RuntimeError as err:  # a collective's error when another rank died: one line instead of a traceback
        failure = peer_failure(info, err)
        if failure is None:
            raise
        raise failure from err
    ema = ema.cpu()
    if info.enabled:
        log.info("FP32 replicas identical on rank %d of %d (sha256 %s)", info.rank, info.world_size, check_replicas_equal(ema))
    return ema, losses


def _load_state(model: nn.Module, ckpt: dict[str, Any], setting: str) -> None:
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # torch lists every mismatch after a header line: name the first, count the rest
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        first = problems[0] if len(problems[0]) <= 200 else problems[0][:200] + " ..."
        detail = first + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        raise DiffquantError(
            f"{setting}: the checkpoint does not fit the configured model ({detail}); check the model group"
        ) from None


def load_cache_entry(path: Path, key: str) -> dict[str, Any] | None:
    """A cache entry if it is readable and was made for `key`; a truncated or foreign file is rebuilt, never used."""
    ckpt = load_or_none(path, "Cache entry", "rebuilding it", weights_only=False)
    if ckpt is None:
        return None
    if not isinstance(ckpt, dict) or ckpt.get("key") != key or "state_dict" not in ckpt:
        logging.getLogger("diffquant").warning("Cache entry %s does not match its key %s; rebuilding it", path, key)
        return None
    if "sha256" in ckpt and state_digest(ckpt["state_dict"]) != ckpt["sha256"]:
        logging.getLogger("diffquant").warning("Cache entry %s fails its checksum; rebuilding it", path)
        return None
    return ckpt


def cache_blob(state_dict: dict[str, Any], key: str, **fields: Any) -> dict[str, Any]:
    """A cache entry: the weights, the key of the config that made them, their checksum, and extra fields."""
    return {"state_dict": state_dict, "key": key, "sha256": state_digest(state_dict), **fields}


def get_classifier(cfg: Config, data: DataSplit) -> tuple[DigitClassifier, float, bool]:
    """The feature classifier for fid_cls (cached per data set, steps and seed) and its held-out accuracy."""
    log = logging.getLogger("diffquant")
    key = config_hash({"dataset": cfg.dataset.key(seed=cfg.seed), "steps": cfg.eval.classifier_steps, "seed": cfg.seed})
    path = Path(cfg.paths.cache_dir) / "classifier" / key / "model.pt"
    with cache_lock(path, "feature classifier"):
        ckpt = load_cache_entry(path, key)
        if ckpt is not None:
            model = DigitClassifier(**ckpt["model_config"])
            model.load_state_dict(ckpt["state_dict"])
            log.info("Reusing the cached feature classifier %s (no training)", path)
            return model.eval(), float(ckpt["accuracy"]), True
        log.info("Training the feature classifier for %d steps", cfg.eval.classifier_steps)
        model = train_classifier(
            data.train_images,
            data.train_labels,
            num_classes=data.num_classes,
            steps=cfg.eval.classifier_steps,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        acc = accuracy(model, data.test_images, data.test_labels)
        atomic_torch_save(cache_blob(model.state_dict(), key, model_config=model.config, accuracy=acc), path)
        return model, acc, False
