"""One job of a sweep: seeds, a status file, failures that do not end the sweep, skipping finished jobs.

Every job folder gets `status.json` ({"status": "ok" | "failed", "error", "objective", "overrides", "seconds"}),
written atomically. In a multirun a failing job logs its traceback, records the error and returns
NaN, so the launcher goes on with the other jobs; a single run re-raises (exit code 2 for a
DiffquantError).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffquant.cache.store import atomic_write_json
from diffquant.errors import DiffquantError

STATUS_FILE = "status.json"
RESULTS_FILE = "results.json"
# Overrides that change how a job is run, not what it computes: ignored when matching finished jobs.
NEUTRAL_OVERRIDE_KEYS = ("sweep.skip_done", "progress")


@dataclass
class JobInfo:
    """Where a job writes, the overrides that define it, and whether it is part of a multirun."""

    dir: Path
    overrides: list[str]
    multirun: bool
    seed: int = 0
    skip_done: bool = False
    size_budget_bytes: Optional[int] = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: joblib reuses worker processes, so no job may inherit RNG state."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def describe(exc: BaseException) -> str:
    """One line for the summary: a DiffquantError's own message, else `Type: message`."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, DiffquantError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def defining_overrides(overrides: list[str]) -> list[str]:
    """The overrides that determine a job's results (run-only switches such as skip_done removed)."""
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in NEUTRAL_OVERRIDE_KEYS]


def estimated_weight_bytes(results: dict[str, Any]) -> Optional[float]:
    """The weights' packed size: the run's `model/packed_bytes` (each layer at its width and format, scales and float
    layers counted), else (runs without it: FP32, GPU backends, older results) FP32 state_dict bytes scaled to weight_bits."""
    packed = results.get("metrics", {}).get("model/packed_bytes")
    if packed is not None:
        return float(packed)
    fp32_bytes = results.get("metrics", {}).get("model/size_bytes_fp32")
    bits = results.get("weight_bits")
    return None if fp32_bytes is None or bits is None else fp32_bytes * min(int(bits), 32) / 32


def objective(results: dict[str, Any], size_budget_bytes: Optional[int]) -> float:
    """What a sweeper minimizes: eval/fid_cls, +inf over the size budget, NaN if missing."""
    fid = results.get("metrics", {}).get("eval/fid_cls")
    if fid is None:
        return math.nan
    size = estimated_weight_bytes(results)
    if size_budget_bytes is not None and size is not None and size > size_budget_bytes:
        return math.inf
    return float(fid)


def finished_results(job: JobInfo) -> Optional[dict[str, Any]]:
    """results.json of an earlier run of this job if it completed with the same defining overrides."""
    try:
        status = json.loads((job.dir / STATUS_FILE).read_text())
        results = json.loads((job.dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    same = defining_overrides(status.get("overrides", [])) == defining_overrides(job.overrides)
    complete = status.get("status") == "ok" and "eval/fid_cls" in results.get("metrics", {})
    return results if same and complete else None


def write_status(job: JobInfo, status: str, seconds: float, value: float, error: Optional[str] = None) -> None:
    """status.json of the job (atomically): status, error, the objective returned to the sweeper, overrides, seconds."""
    atomic_write_json(
        {"status": status, "error": error, "objective": value, "overrides": job.overrides, "seconds": round(seconds, 3)},
        job.dir / STATUS_FILE,
    )


def run_job(task: Callable[[], dict[str, Any]], job: JobInfo) -> float:
    """Run `task` (returns the results dict) as one job; return the sweep objective."""
    log = logging.getLogger("diffquant")
    if job.skip_done and (done := finished_results(job)) is not None:
        log.info("Skipping job %s: complete results for the same overrides (sweep.skip_done=true)", job.dir)
        return objective(done, job.size_budget_bytes)
    seed_everything(job.seed)
    start = time.perf_counter()
    try:
        results = task()
    except Exception as exc:  # noqa: BLE001 - any failure of one job is recorded; the sweep goes on
        write_status(job, "failed", time.perf_counter() - start, math.nan, describe(exc))
        if not job.multirun:
            raise
        log.error("Job %s failed: %s", job.dir, describe(exc), exc_info=not isinstance(exc, DiffquantError))
        return math.nan
    value = objective(results, job.size_budget_bytes)
    write_status(job, "ok", time.perf_counter() - start, value)
    return value
