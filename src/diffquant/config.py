"""Typed schemas behind every config group, registered in Hydra's ConfigStore; validation lives here.

The `quant` and `backend` schemas live in quant/config.py, `diffusion` and `sampler` in
diffusion/config.py; they are re-exported from here. The `model` and `dataset` groups name a class
or function by `_target_` (`components.py`); the built-in targets' schemas live in models/schemas.py
and data/schemas.py. `sampler` and `diffusion` name a function by `_target_` too, with fixed settings.

Types are checked by OmegaConf at compose time; ranges and choices are checked in `__post_init__`
when `to_config` turns the composed DictConfig into these dataclasses.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from diffquant.components import Component, explicit_keys, make_component, plain_node
from diffquant.data.schemas import dataset_schemas
from diffquant.diffusion.config import DiffusionConfig, SamplerConfig, settle_names
from diffquant.errors import DiffquantError, check_choice, check_device, check_range, check_writable_dir
from diffquant.models.schemas import model_schemas
from diffquant.quant.config import BackendConfig, CalibConfig, QATConfig, QuantConfig, ReconConfig  # noqa: F401
from diffquant.quant.presets import apply_preset, describe

# What the pipeline passes to a target that has a parameter of that name (never set in the node).
MODEL_SUPPLIED = MappingProxyType({"in_channels": "the data's channels", "image_size": "the data's image size"})
DATASET_SUPPLIED = MappingProxyType({"seed": "the run's seed (set seed=...)"})
# diffquant's own keys of a group: read by the pipeline, never passed to the target.
MODEL_OWN_KEYS = ("_target_", "name", "checkpoint")
DATASET_OWN_KEYS = ("_target_", "name")


def default_model() -> Component:
    """`diffquant.models.unet.UNet` with its constructor's defaults (unet_tiny's layout)."""
    return Component("model", "diffquant.models.unet.UNet", name="unet_tiny", supplied=tuple(MODEL_SUPPLIED))


def default_dataset() -> Component:
    """`diffquant.data.datasets.load_digits` with its defaults (16x16 digits, 20 % held out)."""
    return Component("dataset", "diffquant.data.datasets.load_digits", name="digits", supplied=tuple(DATASET_SUPPLIED))


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    ema_decay: float = 0.995
    log_every: int = 25
    checkpoint_every: int = 200  # steps between resumable checkpoints (0: none)
    bf16: bool = False  # bf16 autocast of the forward pass (useful on GPUs, device=cuda)
    bundled: bool = True  # use the FP32 model shipped with diffquant when this exact config has one (cache/bundled.py)
    cond_dropout: float = 0.1  # conditional models: the probability of training on the null condition (guidance)

    def __post_init__(self) -> None:
        check_range("train.cond_dropout", self.cond_dropout, 0.0, 1.0)
        check_range("train.steps", self.steps, 1)
        check_range("train.checkpoint_every", self.checkpoint_every, 0)
        check_range("train.batch_size", self.batch_size, 1)
        check_range("train.ema_decay", self.ema_decay, 0.0, 1.0)


@dataclass
class FIDConfig:
    extractor: str = "classifier"  # classifier (offline CNN, default) | inception (needs the `fid` extra)
    batch_size: int = 32  # Inception forward batch

    def __post_init__(self) -> None:
        check_choice("eval.fid.extractor", self.extractor, ("classifier", "inception"))
        check_range("eval.fid.batch_size", self.batch_size, 1)


# The fewest paired samples (eval.num_samples x len(eval.seeds)) the bootstrap intervals accept: below
# ~30 rows a percentile interval under-covers (resampling a small set cannot show its tails) and
# FID / k-NN precision-recall of so few samples are not worth an interval. tests/conftest.py runs at 32.
MIN_PAIRED_SAMPLES = 30


@dataclass
class EvalConfig:
    num_samples: int = 512  # per seed
    batch_size: int = 256
    seeds: list[int] = field(default_factory=lambda: [1234])  # one noise draw of num_samples per seed, pooled
    bootstrap: int = 1000  # paired bootstrap replicates of every FP32-vs-quantized delta
    eps_timesteps: int = 20
    eps_num_images: int = 128
    classifier_steps: int = 400
    grid_images: int = 64
    fid: FIDConfig = field(default_factory=FIDConfig)
    precision_recall_k: int = 3
    traj_num_samples: int = 64
    act_probe_images: int = 4

    @property
    def total_samples(self) -> int:
        """The paired samples evaluated: num_samples per seed, over every seed."""
        return self.num_samples * len(self.seeds)

    def __post_init__(self) -> None:
        check_range("eval.num_samples", self.num_samples, 2)
        if not self.seeds:
            raise DiffquantError("eval.seeds=[] is empty; allowed: a list of one or more distinct seeds, e.g. eval.seeds=[1234]")
        if len(set(self.seeds)) != len(self.seeds):
            raise DiffquantError(f"eval.seeds={list(self.seeds)} repeats a seed (the same noise twice); allowed: distinct seeds")
        check_range("eval.bootstrap", self.bootstrap, 100)
        if self.total_samples < MIN_PAIRED_SAMPLES:
            raise DiffquantError(
                f"eval.num_samples={self.num_samples} x {len(self.seeds)} seed(s) = {self.total_samples} paired samples is too "
                f"few for the bootstrap intervals; allowed: eval.num_samples * len(eval.seeds) >= {MIN_PAIRED_SAMPLES}"
            )
        check_range("eval.eps_timesteps", self.eps_timesteps, 1)
        check_range("eval.precision_recall_k", self.precision_recall_k, 1)
        if self.precision_recall_k >= self.num_samples:
            raise DiffquantError(
                f"eval.precision_recall_k={self.precision_recall_k} must be below eval.num_samples={self.num_samples}"
            )
        check_range("eval.traj_num_samples", self.traj_num_samples, 1)
        check_range("eval.act_probe_images", self.act_probe_images, 1)


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    histograms: bool = True


@dataclass
class PathsConfig:
    cache_dir: str = "outputs/cache"
    output_dir: str = "outputs/runs/manual"

    def __post_init__(self) -> None:
        check_writable_dir("paths.cache_dir", self.cache_dir)


@dataclass
class SweepConfig:
    skip_done: bool = False  # a job whose folder holds complete results for the same overrides is not re-run
    size_budget_bytes: Optional[int] = None  # sweepers see +inf for jobs whose estimated weight size exceeds it

    def __post_init__(self) -> None:
        if self.size_budget_bytes is not None:
            check_range("sweep.size_budget_bytes", self.size_budget_bytes, 1)


@dataclass
class Config:
    """A validated run configuration; `model` and `dataset` are `_target_` components (`components.py`)."""

    model: Component = field(default_factory=default_model)
    dataset: Component = field(default_factory=default_dataset)
    quant: QuantConfig = field(default_factory=QuantConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    progress: bool = True
    device: str = "cpu"  # where FP32 training, QAT and fake-quant sampling run: cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_device(self.device)
        check_trajectory(self)


def check_trajectory(cfg: Config) -> None:
    """Cross-field rules of the sampling trajectory: its timesteps exist, calibration keeps at most one set per step."""
    T, sampler = cfg.diffusion.num_timesteps, cfg.sampler
    steps = len(sampler.timesteps(T))  # DDIM's timesteps reject sampler.steps > T
    if steps == T:  # DDPM: every timestep
        source = f"diffusion.num_timesteps={T}, sampler={sampler.name}"
    elif steps == sampler.steps:
        source = f"sampler.steps={sampler.steps}"
    else:
        source = f"sampler={sampler.name}, sampler.steps={sampler.steps}, diffusion.num_timesteps={T}"
    if cfg.quant.method != "fp32" and cfg.quant.calib.timesteps > steps:
        raise DiffquantError(
            f"quant.calib.timesteps={cfg.quant.calib.timesteps} is more than the {steps} steps of the "
            f"sampling trajectory ({source}); allowed: 1..{steps}"
        )


@dataclass
class ConfigSchema(Config):
    """The compose-time schema: `model` and `dataset` are free-form `_target_` nodes, validated by `to_config`."""

    model: Any = field(default_factory=dict)
    dataset: Any = field(default_factory=dict)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore as `config_schema` (conf/config.yaml lists it first)."""
    ConfigStore.instance().store(name="config_schema", node=ConfigSchema)


def to_config(cfg: DictConfig, overrides: Optional[Sequence[str]] = None) -> Config:
    """Resolve and validate a composed config into typed dataclasses (range errors become DiffquantError).

    `overrides` are the command line's (Hydra's task overrides): a `model.` / `dataset.` key typed
    there that the target does not take is an error, an inherited one is ignored. Left None, they
    are read from the `hydra` node when the config was composed with it.
    """
    if "hydra" in cfg:  # composed with return_hydra_config=True: the command line is in there, the rest is Hydra's
        overrides = list(cfg.hydra.overrides.task) if overrides is None else overrides
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pop("hydra")
    overrides = overrides or []
    check_known_keys(cfg)
    cfg = settle_names(cfg, overrides)
    cfg, preset, changed = apply_preset(cfg, overrides)
    if preset:
        logging.getLogger("diffquant").info(describe(preset, changed))
    model = make_component(
        "model", plain_node(cfg, "model"), explicit_keys(overrides, "model"), model_schemas(), MODEL_SUPPLIED, MODEL_OWN_KEYS
    )
    if model.checkpoint and model.kwargs.get("pretrained"):
        raise DiffquantError("model.pretrained and model.checkpoint are both set; give one of them")
    dataset = make_component(
        "dataset",
        plain_node(cfg, "dataset"),
        explicit_keys(overrides, "dataset"),
        dataset_schemas(),
        DATASET_SUPPLIED,
        DATASET_OWN_KEYS,
    )
    try:
        obj = OmegaConf.to_object(cfg)
        if isinstance(obj, dict):  # composed without the schema (e.g. a bare OmegaConf.create)
            obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ConfigSchema), cfg))
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, DiffquantError) else None
        if cause is not None:
            raise cause from None
        raise DiffquantError(str(exc).splitlines()[0]) from None
    assert isinstance(obj, Config)
    values = {f.name: getattr(obj, f.name) for f in fields(Config)}
    return Config(**{**values, "model": model, "dataset": dataset})


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Reject keys the schema lacks: `+quant.wieght_bits=4` composes (Hydra adds the key) but would be ignored."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    names = [f.name for f in fields(schema)]
    for key, value in node.items_ex(resolve=False):
        if key in names:
            if isinstance(value, DictConfig):
                check_known_keys(value, f"{prefix}{key}.")
            continue
        guess = difflib.get_close_matches(str(key), names, n=1)
        hint = (
            f"did you mean {prefix}{guess[0]}?"
            if guess
            else f"allowed keys{' in ' + prefix[:-1] if prefix else ''}: {', '.join(names)}"
        )
        raise DiffquantError(f"{prefix}{key}={value!r} is not a setting; {hint}")
