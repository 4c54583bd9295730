"""Real multiruns of the tiny model: joblib through multirun.sh, Optuna on the basic launcher, submitit_local."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import CONF_DIR, TINY_OVERRIDES

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'

MULTIRUN_SH = CONF_DIR.parent / "multirun.sh"
TRAINED = "Training the FP32 model"


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """A sweep command with its own environment additions (OMP_NUM_THREADS=1: parallel jobs on 2 cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=full_env)


def sweep_args(tmp_path: Path) -> list[str]:
    return [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY_OVERRIDES]


def job_logs(sweep: Path) -> list[str]:
    return [p.read_text() for p in sorted(sweep.glob("*/diffquant.log"))]


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((sweep / "summary.csv").open()))


@pytest.mark.heavy
def test_joblib_grid_with_an_invalid_job_trains_once_and_summarises_every_job(tmp_path: Path) -> None:
    cmd = [str(MULTIRUN_SH), "bits", "quant.weight_bits=4,8,9", "quant.act_bits=8", *sweep_args(tmp_path)]
    proc = run(cmd, DIFFQUANT=f"{sys.executable} -m diffquant.run", N_JOBS="2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    sweep = tmp_path / "sweep"
    assert sum(log.count(TRAINED) for log in job_logs(sweep)) == 1
    rows = summary_rows(sweep)
    assert [(r["job"], r["weight_bits"], r["status"]) for r in rows] == [("0", "4", "ok"), ("1", "8", "ok"), ("2", "9", "failed")]
    assert [r["execution"] for r in rows] == ["fakequant", "int8", ""]
    assert rows[2]["error"] == "quant.weight_bits=9 is out of range; allowed: 2..8" and rows[2]["eval/fid_cls"] == ""
    assert all(float(r["eval/fid_cls"]) > 0 and float(r["objective"]) == float(r["eval/fid_cls"]) for r in rows[:2])
    md = (sweep / "summary.md").read_text()
    assert "3 jobs: 2 ok, 1 failed, 0 incomplete." in md and md.count("\n| ") == 4
    assert (sweep / "summary.png").stat().st_size > 10_000

    # Re-run the interrupted sweep into the same folder: finished jobs are skipped, the failed one runs again.
    mtimes = [(sweep / str(i) / "results.json").stat().st_mtime_ns for i in (0, 1)]
    again = run([*cmd, "sweep.skip_done=true"], DIFFQUANT=f"{sys.executable} -m diffquant.run", N_JOBS="2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(sweep / str(i) / "results.json").stat().st_mtime_ns for i in (0, 1)] == mtimes
    assert [log.count("Skipping job") for log in job_logs(sweep)] == [1, 1, 0]
    assert [(r["job"], r["status"]) for r in summary_rows(sweep)] == [("0", "ok"), ("1", "ok"), ("2", "failed")]


@pytest.mark.heavy
def test_optuna_sweep_on_the_basic_launcher_scores_the_size_budget(tmp_path: Path) -> None:
    budget = 30_000  # the tiny model: 201 kB in FP32, so weights of at most 4 bits fit
    proc = run(
        [
            sys.executable,
            "-m",
            "diffquant.run",
            "sweep=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1",
            f"sweep.size_budget_bytes={budget}",
            *sweep_args(tmp_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = summary_rows(sweep)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        over = float(r["weight_bytes_est"]) > budget
        assert float(r["objective"]) == (math.inf if over else float(r["eval/fid_cls"]))
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(float(r["objective"]) for r in rows)
    assert sum(log.count(TRAINED) for log in job_logs(sweep)) == 1


@pytest.mark.heavy
def test_submitit_local_launcher(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, "-m", "diffquant.run", "-m", "hydra/launcher=submitit_local", "quant=fp32,ptq", *sweep_args(tmp_path)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # the jobs ran as submitit jobs
    rows = summary_rows(sweep)
    assert [(r["method"], r["weight_bits"], r["execution"], r["status"]) for r in rows] == [
        ("fp32", "32", "fp32", "ok"),
        ("ptq", "8", "int8", "ok"),
    ]
    assert float(rows[0]["eval/fid_cls"]) == float(rows[1]["eval/fid_cls_fp32"])  # same FP32 model and noise
    assert sum(log.count(TRAINED) for log in job_logs(sweep)) == 1
