"""torchrun with 2 CPU processes (gloo): DDP trains the FP32 model; both ranks end with the same weights."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffquant.training.distributed import DistInfo, state_digest
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
