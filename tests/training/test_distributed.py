"""torchrun with 2 CPU processes (gloo): DDP trains the FP32 model; both ranks end with the same weights."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.training.distributed import DistInfo, peer_failure, state_digest
from helpers import TINY_OVERRIDES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.heavy
@pytest.mark.slow
def test_two_process_torchrun_trains_identical_replicas_and_writes_one_checkpoint(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "diffquant.run",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY_OVERRIDES,
        "train.steps=8",
        "quant=fp32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 processes x 32 images" in out
    digests = dict(re.findall(r"FP32 replicas identical on rank (\d) of 2 \(sha256 ([0-9a-f]{64})\)", out))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    checkpoints = list((tmp_path / "cache").glob("fp32/*/model.pt"))
    assert len(checkpoints) == 1 and not list((tmp_path / "cache").glob("fp32/*/train_state.pt"))
    saved = torch.load(checkpoints[0], weights_only=False)["state_dict"]
    assert state_digest(saved) == digests["0"]  # what rank 0 wrote is what both ranks trained
    assert (tmp_path / "run" / "results.json").is_file()  # rank 0 went on to evaluate


def test_dist_info_reads_torchrun_environment(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = DistInfo.from_env()
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (3, 4, False, True)
    assert info.device("cuda") == "cuda:1" and info.device("cpu") == "cpu"
    monkeypatch.delenv("WORLD_SIZE")
    assert not DistInfo.from_env().enabled


def test_a_collective_broken_by_a_dead_peer_becomes_one_line_and_other_errors_stay() -> None:
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:27284: Connection reset by peer. ...")
    failure = peer_failure(DistInfo(rank=0, world_size=2), gloo)
    assert isinstance(failure, DiffquantError)
    message = str(failure)
    assert message.startswith("torchrun: rank 0 of 2 lost a peer process during FP32 training ([../gloo")
    assert "nothing was saved" in message and "from step 0" in message and "\n" not in message
    assert peer_failure(DistInfo(rank=0, world_size=2), RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(DistInfo(), gloo) is None  # not under torchrun: the error is not about peers


def torchrun(tmp_path: Path, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m"]
    cmd += ["diffquant.run", f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY_OVERRIDES]
    cmd += [f"train.steps={steps}", "quant=fp32", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)


def rank_pids(agent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun's agent started."""
    pids: dict[int, int] = {}
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            pids[int(env["RANK"])] = int(child)
    return pids


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from /proc (Linux)")
def test_a_rank_killed_mid_training_ends_the_job_saves_nothing_and_a_rerun_trains_again(tmp_path: Path) -> None:
    steps = 4000  # long enough to be killed in the middle (the tiny model trains ~100 steps/s per process)
    job = torchrun(tmp_path, steps)
    lines: list[str] = []
    assert job.stdout is not None
    for line in job.stdout:  # wait until both ranks train
        lines.append(line)
        if sum("Training the FP32 model" in seen for seen in lines) == 2:
            break
    time.sleep(2)
    os.kill(rank_pids(job.pid)[1], signal.SIGKILL)
    out = "".join(lines) + job.communicate(timeout=300)[0]
    assert job.returncode != 0
    assert re.search(r"rank\s*: 1 .*\n.*exitcode\s*: -9", out), out[-3000:]  # torchrun names the killed rank
    assert "resumable checkpoints are off" in out
    cache = tmp_path / "cache"
    assert not list(cache.glob("fp32/*/model.pt")) and not list(cache.glob("fp32/*/*state*")), out[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()
    assert "training/loop.py" not in out  # no traceback through our code on any rank (torchrun prints its own report)
    if "lost a peer process" not in out:  # rank 0 reports the lost peer in one line, unless torchrun stopped it first
        assert re.search(r"rank\s*: 0 .*\n.*exitcode\s*: -15", out), out[-3000:]

    rerun = torchrun(tmp_path, steps)
    again = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, again[-3000:]
    assert "Training the FP32 model for 4000 steps" in again and "Resuming" not in again
    assert len(list(cache.glob("fp32/*/model.pt"))) == 1
