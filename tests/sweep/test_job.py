"""One sweep job: status.json, failures that return NaN in a multirun, skip_done, the size-budget objective."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.sweep.job import JobInfo, objective, run_job

OVERRIDES = ["quant=ptq", "quant.weight_bits=4"]


def results(fid: float = 2.5, bits: int = 4) -> dict[str, Any]:
    return {"method": "ptq", "weight_bits": bits, "metrics": {"eval/fid_cls": fid, "model/size_bytes_fp32": 3200}}


def finished_job(tmp_path: Path, **kwargs: Any) -> JobInfo:
    """A job folder whose earlier run completed with OVERRIDES."""
    job = JobInfo(dir=tmp_path, overrides=OVERRIDES, multirun=True)
    run_job(lambda: _write(tmp_path, results(fid=7.0)), job)
    return JobInfo(dir=tmp_path, overrides=kwargs.pop("overrides", OVERRIDES), multirun=True, **kwargs)


def _write(job_dir: Path, res: dict[str, Any]) -> dict[str, Any]:
    (job_dir / "results.json").write_text(json.dumps(res))
    return res


def _fail(exc: Exception) -> dict[str, Any]:
    raise exc


def test_success_writes_ok_status_and_returns_fid(tmp_path: Path) -> None:
    value = run_job(lambda: results(), JobInfo(dir=tmp_path, overrides=OVERRIDES, multirun=True))
    assert value == 2.5
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], status["error"], status["objective"], status["overrides"]) == ("ok", None, 2.5, OVERRIDES)
    assert status["seconds"] >= 0


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (
            DiffquantError("quant.weight_bits=9 is out of range; allowed: 2..8"),
            "quant.weight_bits=9 is out of range; allowed: 2..8",
        ),
        (RuntimeError("shape mismatch\nsecond line"), "RuntimeError: shape mismatch"),
    ],
    ids=["user-error", "crash"],
)
def test_failure_in_a_multirun_is_recorded_and_returns_nan(tmp_path: Path, exc: Exception, error: str) -> None:
    value = run_job(lambda: _fail(exc), JobInfo(dir=tmp_path, overrides=OVERRIDES, multirun=True))
    assert math.isnan(value)
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], status["error"]) == ("failed", error) and math.isnan(status["objective"])


def test_failure_in_a_single_run_is_recorded_and_raised(tmp_path: Path) -> None:
    with pytest.raises(DiffquantError, match="out of range"):
        run_job(lambda: _fail(DiffquantError("out of range")), JobInfo(dir=tmp_path, overrides=[], multirun=False))
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_every_job_starts_from_the_same_seeds(tmp_path: Path) -> None:
    draws = []
    for _ in range(2):
        random.random(), torch.rand(3)  # state left behind by an earlier job in the same worker
        run_job(
            lambda: draws.append((random.random(), torch.rand(1).item())) or results(),
            JobInfo(dir=tmp_path, overrides=[], multirun=True, seed=5),
        )
    assert draws[0] == draws[1]


def test_skip_done_returns_the_stored_result_without_running(tmp_path: Path) -> None:
    job = finished_job(tmp_path, skip_done=True, overrides=[*OVERRIDES, "sweep.skip_done=true"])
    assert run_job(lambda: _fail(AssertionError("must not run")), job) == 7.0


@pytest.mark.parametrize("case", ["skip_done-off", "other-overrides", "failed-before"])
def test_jobs_that_are_not_done_run_again(tmp_path: Path, case: str) -> None:
    if case == "failed-before":
        run_job(lambda: _fail(RuntimeError("boom")), JobInfo(dir=tmp_path, overrides=OVERRIDES, multirun=True))
        (tmp_path / "results.json").write_text(json.dumps(results(fid=7.0)))  # stale results of an older run
        job = JobInfo(dir=tmp_path, overrides=OVERRIDES, multirun=True, skip_done=True)
    else:
        other = ["quant=ptq", "quant.weight_bits=6"] if case == "other-overrides" else OVERRIDES
        job = finished_job(tmp_path, skip_done=case != "skip_done-off", overrides=other)
    assert run_job(lambda: results(fid=1.0), job) == 1.0


@pytest.mark.parametrize(("bits", "budget", "expected"), [(4, 400, 2.5), (4, 399, math.inf), (8, None, 2.5)])
def test_objective_is_inf_over_the_size_budget(bits: int, budget: int | None, expected: float) -> None:
    assert objective(results(bits=bits), budget) == expected  # 3200 FP32 bytes * 4 / 32 = 400


def test_objective_without_fid_is_nan() -> None:
    assert math.isnan(objective({"metrics": {"eval/fid_cls": None}}, None))
