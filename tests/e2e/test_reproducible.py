"""Same config and seed, other thread count: bit-identical metrics, whichever artefacts came from the cache.

FP32 training itself is reproducible at a fixed thread count only (oneDNN splits the reduction of a
weight gradient by thread), so the runs here share the cache entry of the FP32 model and the feature
classifier, as the runs of one machine or sweep do; calibration pairs, FP32 reference samples,
calibration and every metric are recomputed at the other thread count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'


def run(tmp_path: Path, name: str, cache: Path, threads: int) -> dict[str, object]:
    """The real CLI with the tiny model on `threads` threads; its results.json."""
    cmd = [sys.executable, "-m", "diffquant.run", f"hydra.run.dir={tmp_path / name}", f"paths.cache_dir={cache}", *TINY_OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


def quality(results: dict[str, object]) -> dict[str, object]:
    """Every metric but the timings."""
    return {k: v for k, v in results["metrics"].items() if not k.startswith("perf/")}


@pytest.mark.heavy
def test_one_and_two_threads_give_identical_metrics_cached_or_not(tmp_path: Path) -> None:
    first = run(tmp_path, "one_thread", tmp_path / "cache", threads=1)
    warm = run(tmp_path, "two_threads_cached", tmp_path / "cache", threads=2)  # every artefact from the cache
    partly = tmp_path / "cache_partly"
    shutil.copytree(tmp_path / "cache", partly)
    dropped = [p for pattern in ("calib_*.pt", "samples_*.pt") for p in partly.rglob(pattern)]
    assert dropped
    for path in dropped:
        path.unlink()
    rebuilt = run(tmp_path, "two_threads_rebuilt", partly, threads=2)  # pairs and FP32 samples made at 2 threads
    assert first["perf_context"]["torch_num_threads"] == 1 and warm["perf_context"]["torch_num_threads"] == 2
    assert quality(first) == quality(warm) == quality(rebuilt)
    assert len(quality(first)) > 20 and first["activation_ranges"] == rebuilt["activation_ranges"]
