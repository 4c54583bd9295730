"""Paired uncertainty of a run's FP32-vs-quantized comparison (docs/uncertainty.md).

`paired_metrics`: per feature space, the deltas quantized − FP32 of FID / precision / recall / IS and
PSNR vs FP32, each with a 95 % paired-bootstrap interval (metrics/paired.py). `floor_metrics`: FID of
as many real train images against the held-out reference, the value no generator can beat at that
sample count. The per-replicate deltas go to `bootstrap.json`: two runs that share the noise, N, B
and the bootstrap seed pair replicate by replicate, so delta_a − delta_b is a paired bootstrap of
their difference (the FP32 term cancels). Intervals are stored as [low, high] lists;
`interval_scalars` splits them into `_low` / `_high` scalars for TensorBoard and the sweep tables.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from diffquant.cache.store import atomic_write_json
from diffquant.evaluation.compare import SetFeatures, finite_or_none
from diffquant.evaluation.features import FeatureSpace, Reference, reference_statistics
from diffquant.metrics.fid import frechet_distance
from diffquant.metrics.paired import PairedSets, bootstrap_indices, indices_digest, paired_bootstrap, percentile_interval

BOOTSTRAP_FILE = "bootstrap.json"
# Equal in two runs: their replicates pair up and the FP32 term of their deltas is the same set, so it cancels.
PAIRING_KEYS = ("num_samples", "replicates", "seed", "eval_seeds", "indices_sha256", "fp32_samples_sha256")


def bootstrap_seed(eval_seeds: list[int]) -> int:
    """The bootstrap's seed: the first evaluation seed, so every run of a sweep draws the same replicates."""
    return int(eval_seeds[0])


def interval_scalars(metrics: dict[str, Any]) -> dict[str, Optional[float]]:
    """Metrics with each [low, high] interval split into `<key>_low` and `<key>_high` (scalars only)."""
    out: dict[str, Optional[float]] = {}
    for key, value in metrics.items():
        if isinstance(value, (list, tuple)):
            out[f"{key}_low"], out[f"{key}_high"] = (value[0], value[1]) if len(value) == 2 else (None, None)
        else:
            out[key] = value
    return out


def _interval(bounds: tuple[float, float]) -> Optional[list[float]]:
    low, high = finite_or_none(bounds[0]), finite_or_none(bounds[1])
    return None if low is None or high is None else [low, high]


def paired_metrics(
    spaces: list[FeatureSpace],
    refs: dict[str, Reference],
    features: dict[str, tuple[Optional[SetFeatures], Optional[SetFeatures]]],
    fp32_samples: Tensor,
    q_samples: Tensor,
    compare: bool,
    k: int,
    replicates: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[float]], str]:
    """Deltas (quantized − FP32) with 95 % intervals per space, PSNR's interval; the replicates; the indices' hash."""
    log = logging.getLogger("diffquant")
    n = fp32_samples.shape[0]
    digest = indices_digest(bootstrap_indices(n, replicates, seed))
    metrics: dict[str, Any] = {"eval/psnr_vs_fp32_ci95": None, "eval/ssim_vs_fp32_ci95": None}
    deltas: dict[str, list[float]] = {}
    for i, space in enumerate(spaces):
        fp32_feats, q_feats = features[space.name]
        names = ["fid", "precision", "recall"] + (["is"] if space.logits is not None else [])
        keys = {name: f"eval/{name}_{space.short}_delta" for name in names}
        if fp32_feats is None or q_feats is None:  # non-finite samples: no delta, as their metrics are null
            metrics.update({key: value for name in names for key, value in ((keys[name], None), (f"{keys[name]}_ci95", None))})
            continue
        if fp32_feats is q_feats:  # identical sets (quant=fp32): every replicate's delta is exactly 0
            for name in names:
                metrics[keys[name]], metrics[f"{keys[name]}_ci95"], deltas[keys[name]] = 0.0, [0.0, 0.0], [0.0] * replicates
            continue
        with_images = i == 0 and compare and bool(torch.isfinite(q_samples).all())  # PSNR does not depend on the space
        sets = PairedSets(
            refs[space.name].features,
            fp32_feats.features,
            q_feats.features,
            fp32_feats.logits,
            q_feats.logits,
            fp32_samples if with_images else None,
            q_samples if with_images else None,
        )
        result = paired_bootstrap(sets, k, replicates, seed)
        for name in names:
            metrics[keys[name]] = finite_or_none(result.point[name])
            metrics[f"{keys[name]}_ci95"] = _interval(result.ci95[name])
            deltas[keys[name]] = [float(v) for v in result.replicates[name]]
        low, high = result.ci95["fid"]
        if not low <= result.point["fid"] <= high:
            log.warning(
                "%s = %.4g lies outside its bootstrap interval [%.4g, %.4g]: FID of a resampled set (about 0.63 N "
                "distinct rows) is biased, more so with N=%d below the %d feature dimensions; read the interval "
                "as the spread",
                keys["fid"],
                result.point["fid"],
                low,
                high,
                n,
                fp32_feats.features.shape[1],
            )
        if with_images:
            metrics["eval/psnr_vs_fp32_ci95"] = _interval(result.ci95["psnr"])
            metrics["eval/ssim_vs_fp32_ci95"] = _interval(result.ci95["ssim"])
    return metrics, deltas, digest


def floor_images(train_images: Tensor, n: int, seed: int) -> Tensor:
    """`n` real train images (all of them if fewer) drawn without replacement, seeded."""
    order = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(seed))
    return train_images[order[:n]]


def floor_metrics(
    spaces: list[FeatureSpace], refs: dict[str, Reference], images: Tensor, cache_dir: Path, data_key: dict[str, Any]
) -> dict[str, float]:
    """`eval/fid_<space>_floor`: FID of real train `images` against the held-out reference (real vs real)."""
    floor = {}
    for space in spaces:
        real = reference_statistics(space, images, cache_dir, {**data_key, "set": "floor"}, "floor")[0]
        ref = refs[space.name]
        floor[f"eval/fid_{space.short}_floor"] = frechet_distance(
            ref.mu.numpy(), ref.sigma.numpy(), real.mu.numpy(), real.sigma.numpy()
        )
    return floor


def write_bootstrap(path: Path, deltas: dict[str, list[float]], pairing: dict[str, Any]) -> dict[str, Any]:
    """bootstrap.json (the per-replicate deltas and what pairs them); return its summary for results.json."""
    atomic_write_json({**pairing, "interval": "95% percentile", "deltas": deltas}, path)
    return {"file": path.name, **pairing}


def read_bootstrap(job_dir: Path) -> Optional[dict[str, Any]]:
    """A job's bootstrap.json, or None if it has none (older runs) or it is unreadable."""
    try:
        blob = json.loads((job_dir / BOOTSTRAP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return blob if isinstance(blob, dict) and isinstance(blob.get("deltas"), dict) else None


def paired_difference(a: dict[str, Any], b: dict[str, Any], key: str) -> Optional[tuple[float, float, float]]:
    """(mean, low, high) of delta_a − delta_b over paired replicates of `key`; None if the runs do not pair."""
    if any(a.get(name) != b.get(name) for name in PAIRING_KEYS):
        return None
    da, db = a["deltas"].get(key), b["deltas"].get(key)
    if da is None or db is None or len(da) != len(db) or not da:
        return None
    diff = np.asarray(da, np.float64) - np.asarray(db, np.float64)
    low, high = percentile_interval(diff)
    return float(diff.mean()), low, high
