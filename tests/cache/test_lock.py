"""Two processes that need the same cache entry at the same moment: one builds it, the other waits and loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffquant.cache.lock import cache_lock, lock_path

# Loads the data, meets the other process at a barrier (two marker files), then asks for the classifier.
WORKER = """
import logging, sys, time
from dataclasses import replace
from pathlib import Path
from diffquant.cache.artifacts import get_classifier
from diffquant.config import Config, EvalConfig, PathsConfig, default_dataset
from diffquant.data.loading import load_data

logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
cache, me, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
dataset = replace(default_dataset(), kwargs={"image_size": 8})
cfg = Config(dataset=dataset, eval=EvalConfig(classifier_steps=80), paths=PathsConfig(cache_dir=cache), progress=False)
data = load_data(cfg.dataset, cfg.seed)
me.touch()
while not other.exists():
    time.sleep(0.005)
_, acc, cached = get_classifier(cfg, data)
print(f"RESULT acc={acc:.6f} cached={cached}")
"""


@pytest.mark.slow
def test_two_processes_build_a_cache_entry_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a small machine: no thread oversubscription
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(cache), str(tmp_path / f"ready{i}"), str(tmp_path / f"ready{1 - i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    logs = [out for out, _ in outputs]
    assert sum(log.count("Training the feature classifier") for log in logs) == 1
    builder, waiter = sorted(logs, key=lambda log: "Training the feature classifier" not in log)
    assert "cached=False" in builder and "cached=True" in waiter
    assert "Waiting for another job building the feature classifier" in waiter  # they did overlap
    assert "Reusing the cached feature classifier" in waiter
    acc = {line.split()[1] for log in logs for line in log.splitlines() if line.startswith("RESULT")}
    assert len(acc) == 1  # the waiter loaded the very model the builder trained
    entries = list((cache / "classifier").glob("*/model.pt"))
    assert len(entries) == 1 and lock_path(entries[0]).name == "model.pt.lock"


def test_lock_is_released_after_an_error(tmp_path: Path) -> None:
    entry = tmp_path / "entry" / "model.pt"
    try:
        with cache_lock(entry):
            raise ValueError("build failed")
    except ValueError:
        pass
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; from filelock import FileLock; "
                f"FileLock({str(lock_path(entry))!r}).acquire(timeout=5); print('acquired')"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "acquired", proc.stderr
