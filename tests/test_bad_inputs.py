"""Bad input matrix: overrides, files and environments that must fail with one line and leave earlier work intact.

One good tiny run fills a run folder and a cache; every bad case then runs the CLI against the same
cache and must exit non-zero (2 for diffquant's own errors, 1 for Hydra's compose errors), print a line
naming the setting and its bad value, show no traceback, and leave every file of the good run and the
cache byte for byte as it was (no file added, changed or removed; lock files aside).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.quant.engine import set_engine
from helpers import TINY_OVERRIDES
from helpers.bad_inputs import CASES, Bad
from helpers.cli_fork import CliCall, CliResult, cli_server, run_forked

SLOW_QNNPACK = r"backend\.engine='qnnpack' on an \S+ CPU will be slow"


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and mtime of every file under `folders` (lock files aside: taking a lock may touch them)."""
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }


def cli_args(tmp: Path, run_dir: str, *overrides: str) -> list[str]:
    """Arguments of a tiny run into `tmp/run_dir` with the shared cache; `{tmp}` in overrides is filled in.

    A case that picks its own model or data set (`model._target_=`, `model=custom`) drops the tiny
    UNet's or digits' keys: typed on the command line, keys its target does not take are errors.
    """
    own = {g for g in ("model", "dataset") for o in overrides if o.startswith((f"{g}._target_=", f"{g}=custom"))}
    tiny = [o for o in TINY_OVERRIDES if o.split(".")[0] not in own]
    return [
        f"hydra.run.dir={tmp / run_dir}",
        f"paths.cache_dir={tmp / 'cache'}",
        *tiny,
        *(o.replace("{tmp}", str(tmp)) for o in overrides),
    ]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, int]], dict[str, CliResult]]:
    """The good run's files, then every bad case run once against the same cache (one forked CLI process each)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    good = cli_server().run(cli_args(tmp, "good"), cwd=tmp, env={"OMP_NUM_THREADS": "1"})
    assert good.returncode == 0, good.stderr[-3000:]
    before = snapshot(tmp / "good", tmp / "cache")
    assert any(p.endswith("results.json") for p in before) and sum("/fp32/" in p for p in before) >= 3  # model, calib, samples
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty").mkdir()
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    torch.save([1, 2, 3], tmp / "list.pt")
    (tmp / "good_fp32.pt").write_bytes(next((tmp / "cache" / "fp32").glob("*/model.pt")).read_bytes())
    calls = [CliCall(c.id, cli_args(tmp, f"bad/{c.id}", *c.overrides), dict(c.env), c.patch) for c in CASES]
    calls.append(CliCall("full-error", cli_args(tmp, "bad/full-error", "quant.weight_bits=9"), {"HYDRA_FULL_ERROR": "1"}))
    calls.append(CliCall("qnnpack", cli_args(tmp, "bad/qnnpack", "backend=qnnpack", "quant.skip=[*]")))
    return tmp, before, run_forked(calls, tmp / "forked")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_line_and_changes_nothing(matrix, case: Bad) -> None:
    tmp, before, results = matrix
    result = results[case.id]
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output[-3000:]
    assert re.search(case.message, output), output[-3000:]
    assert "Traceback" not in output
    if case.code == 2:  # diffquant's own errors: exactly one line on stderr
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            line for line in result.stderr.splitlines() if line.startswith("diffquant: error: ")
        ]
    assert not (tmp / "bad" / case.id / "results.json").exists()
    assert snapshot(tmp / "good", tmp / "cache") == before


def test_an_error_quoting_a_multi_line_message_is_still_one_line() -> None:
    """A corrupt checkpoint's unpickling error can span lines (random bytes once hit pickle's
    "A load persistent id instruction was encountered,\nbut no persistent_load ..."): the CLI prints one."""
    quoted = "A load persistent id instruction was encountered,\nbut no persistent_load function was specified."
    error = DiffquantError(f"model.checkpoint='x.pt' is not a readable checkpoint (UnpicklingError: {quoted})")
    assert str(error) == (
        "model.checkpoint='x.pt' is not a readable checkpoint (UnpicklingError: A load persistent id instruction "
        "was encountered, but no persistent_load function was specified.)"
    )
    assert str(DiffquantError("one line")) == "one line"


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(matrix) -> None:
    """The documented debug switch: HYDRA_FULL_ERROR=1 adds the traceback to the one-line error."""
    result = matrix[2]["full-error"]
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("diffquant: error: quant.weight_bits=9 is out of range; allowed: 2..8")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the warning is for x86 CPUs")
def test_qnnpack_on_x86_warns_that_it_will_be_slow(matrix) -> None:
    result = matrix[2]["qnnpack"]
    assert result.returncode == 2 and "leaves no Conv2d / Linear layer" in result.stderr
    assert re.search(SLOW_QNNPACK + r": its int8 kernels are written for ARM", result.stdout)
    assert not re.search(SLOW_QNNPACK, matrix[2]["skip-every-layer"].stdout)  # fbgemm: no warning


@pytest.mark.parametrize(("machine", "warns"), [("x86_64", True), ("AMD64", True), ("aarch64", False), ("arm64", False)])
def test_qnnpack_slow_warning_depends_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, machine: str, warns: bool
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    previous = torch.backends.quantized.engine
    try:
        set_engine("qnnpack")
    finally:
        torch.backends.quantized.engine = previous
    assert bool(re.search(SLOW_QNNPACK, caplog.text)) == warns


@pytest.mark.slow
def test_forked_calls_match_a_plain_cli_process(matrix) -> None:
    """The fork driver is faithful: `python -m diffquant.run` gives the same exit code and message."""
    tmp = matrix[0]
    cases = [c for c in CASES if c.id in ("weight-bits-9", "quant-option", "checkpoint-random-bytes")]
    plain = {  # started together: three independent processes on the machine's cores
        c.id: subprocess.Popen(
            [sys.executable, "-m", "diffquant.run", *cli_args(tmp, f"plain/{c.id}", *c.overrides)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for c in cases
    }
    for case in cases:
        _, stderr = plain[case.id].communicate(timeout=300)
        forked = matrix[2][case.id]
        assert (plain[case.id].returncode, stderr.strip().splitlines()[-1]) == (
            forked.returncode,
            forked.stderr.strip().splitlines()[-1],
        )
