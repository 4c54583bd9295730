"""A training run killed with SIGKILL and started again with the same command resumes and ends identically."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES
from helpers.cli import diffquant

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'

RESUME = ("train.steps=200", "train.checkpoint_every=20")


def start(tmp_path: Path) -> subprocess.Popen[str]:
    """The same command as `diffquant(tmp_path, *RESUME)`, in the background."""
    cmd = [
        sys.executable,
        "-m",
        "diffquant.run",
        f"hydra.run.dir={tmp_path / 'killed'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY_OVERRIDES,
        *RESUME,
    ]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.heavy
def test_sigkilled_training_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    proc = start(tmp_path)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "cache").glob("fp32/*/train_state.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps past the checkpoint: they are lost and must be recomputed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    entry = next((tmp_path / "cache").glob("fp32/*"))
    assert (entry / "train_state.pt").is_file() and not (entry / "model.pt").exists()

    resumed = diffquant(tmp_path, *RESUME, run_dir="resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and "at step 0" not in resumed.stdout
    assert not (entry / "train_state.pt").exists()  # cleared once model.pt is written
    resumed_model = (entry / "model.pt").read_bytes()

    shutil.rmtree(entry)  # the same command again, uninterrupted from scratch
    fresh = diffquant(tmp_path, *RESUME, run_dir="fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "Resuming" not in fresh.stdout
    assert (entry / "model.pt").read_bytes() == resumed_model
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["metrics"] for d in ("resumed", "fresh"))
    timing = {k for k in a if k.startswith("perf/")}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
