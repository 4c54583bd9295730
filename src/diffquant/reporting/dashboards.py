"""What the TensorBoard run of an experiment shows, and how the dashboards are laid out.

Scalars are grouped by prefix (`train/`, `eval/`, `model/`, `perf/`); a Custom Scalars layout
overlays each quantized metric with its `_fp32` twin; image grids compare real | FP32 | quantized |
abs difference from the same noise; histograms hold weights and each layer's input activations;
HParams hold every quantization knob with the metrics; text cards hold the protocol and the config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from diffquant.components import Component
from diffquant.config import BackendConfig, EvalConfig, QuantConfig
from diffquant.diffusion.config import SamplerConfig
from diffquant.evaluation.uncertainty import interval_scalars
from diffquant.reporting.tensorboard import RunLogger, to_grid

FIGURES = ("samples.png", "samples_by_class.png", "eps_rel_err.png", "traj_eps_mse.png", "act_ranges.png")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists become strings (HParams takes scalars only)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if value is None or isinstance(value, (list, tuple)):
        return {prefix: str(value)}
    return {prefix: value}


def hparams_of(
    header: dict[str, Any],
    quant: QuantConfig,
    backend: BackendConfig,
    model: Component,
    dataset: Component,
    sampler: SamplerConfig,
    ev: EvalConfig,
) -> dict[str, Any]:
    """Every quantization knob (all of `quant`, `backend`), the resolved run header and the setting that frames it."""
    params = flatten("quant", dataclasses.asdict(quant))
    params.update(flatten("backend", dataclasses.asdict(backend)))
    params.update({f"run.{k}": v for k, v in flatten("", header).items()})
    params.update(
        {
            "model": model.name,
            "model._target_": model.target,
            "dataset": dataset.name,
            "dataset._target_": dataset.target,
            "sampler": sampler.name,
            "sampler.steps": sampler.steps,
            "eval.fid.extractor": ev.fid.extractor,
            "eval.num_samples": ev.num_samples,
            "eval.seeds": str(list(ev.seeds)),
            "eval.bootstrap": ev.bootstrap,
        }
    )
    return params


def overlay_layout(scalar_tags: list[str]) -> dict[str, dict[str, list[str]]]:
    """Custom Scalars: each tag with an `_fp32` twin is charted with it; each paired delta (and PSNR) with its
    95 % interval's `_ci95_low` / `_ci95_high`; the error sources; training losses."""
    tags = set(scalar_tags)
    pairs = {t: [t, f"{t}_fp32"] for t in sorted(tags) if f"{t}_fp32" in tags}
    intervals = {t: [t, f"{t}_ci95_low", f"{t}_ci95_high"] for t in sorted(tags) if f"{t}_ci95_low" in tags}
    sources = [t for t in ("eval/traj_eps_mse_by_t", "eval/eps_rel_err_by_t") if t in tags]
    return {
        "FP32 vs quantized": pairs,
        "Paired delta vs FP32 (95% interval)": intervals,
        "Where the error comes from": {t: [t] for t in sources},
        "Training": {"loss (FP32 training, QAT fine-tuning)": ["train/loss", "qat/loss"]},
    }


def png_tensor(path: Path) -> Tensor:
    """A PNG file as a [3, H, W] float tensor in [0, 1]."""
    import matplotlib.image

    rgb = matplotlib.image.imread(path)[..., :3]  # 8-bit PNGs read as value / 255, as torchvision's decode_png / 255
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()


def log_run(
    logger: RunLogger,
    hparams: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, float | None],
    series: dict[str, dict[int, float]],
    protocol: dict[str, Any],
    images: dict[str, Tensor],
    models: dict[str, nn.Module],
    activations: dict[str, Tensor],
    out_dir: Path,
) -> None:
    """Everything TensorBoard shows for a run (scalars, series, grids, figures, histograms, HParams, text).

    `hparams` are `hparams_of`'s; `config` is the resolved run config as a dict (its text card). `images`
    are the grids' rows (real, fp32, quantized), cut to the grid's length; every model and activation given
    gets histograms (pass none when `logger.histograms` is off). A [low, high] interval in `metrics`
    becomes two scalars, `<key>_low` and `<key>_high` (scalars and HParams take numbers only).
    """
    metrics = interval_scalars(metrics)
    logger.scalars(metrics)
    for tag, values in series.items():
        logger.series(tag, values)
    n = min(batch.shape[0] for batch in images.values())
    grids = {tag: to_grid(batch[:n]) for tag, batch in images.items()}
    grids["abs_diff_x4"] = to_grid((images["quantized"][:n] - images["fp32"][:n]).abs().mul(4).sub(1))
    for tag, grid in grids.items():
        logger.image(f"samples/{tag}", grid)
    logger.image(
        "samples/real_fp32_quantized_absdiff", torch.cat([grids[k] for k in ("real", "fp32", "quantized", "abs_diff_x4")], dim=2)
    )
    for name in FIGURES:
        if (out_dir / name).is_file():
            logger.image(f"figures/{Path(name).stem}", png_tensor(out_dir / name))
    for label, model in models.items():
        logger.histograms(model, f"weights_{label}")
    for layer, values in activations.items():
        logger.histogram(f"activations/{layer}", values)
    logger.custom_scalars(overlay_layout([*(t for t, v in metrics.items() if v is not None), *series]))
    logger.hparams(hparams, metrics)
    logger.text("protocol", "```\n" + json.dumps(protocol, indent=2) + "\n```")
    logger.text("config", "```\n" + OmegaConf.to_yaml(OmegaConf.create(config)) + "\n```")
