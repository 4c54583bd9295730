"""Multi-process FP32 training with PyTorch's DistributedDataParallel, launched by `torchrun`.

`torchrun --nproc_per_node=N -m diffquant.run ...` starts N copies; each trains on its own batches
(`train.batch_size` per process), gradients are averaged by DDP (gloo on CPU, NCCL on GPUs), and only
rank 0 writes artefacts and goes on to quantize and evaluate. Without torchrun this is a no-op.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn

from diffquant.errors import DiffquantError

# what gloo / NCCL / c10d put in the error a collective raises when a peer process is gone
PEER_FAILURE_MARKS = ("gloo", "nccl", "processgroup", "c10d", "connection reset", "connection closed", "broken pipe")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and runs the stages after training."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """One GPU per process: `cuda` becomes `cuda:<local_rank>` under torchrun."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) if there is one."""
    info = DistInfo.from_env()
    if info.enabled and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info


def shutdown() -> None:
    """Leave the process group (no barrier: rank 0 goes on to quantize while the others are done)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_training(model: nn.Module) -> nn.Module:
    """DDP around the model inside a process group (it averages gradients), the model itself otherwise."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state dict, in key order (bitwise identity of two models)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_replicas_equal(model: nn.Module) -> str:
    """The model's digest; under torchrun every rank's must match, else training went wrong."""
    digest = state_digest(model.state_dict())
    if dist.is_initialized() and dist.get_world_size() > 1:
        digests: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas differ after training: {digests}")
    return digest


def peer_failure(info: DistInfo, error: BaseException) -> DiffquantError | None:
    """One line for a collective that failed because another torchrun process stopped (None: some other error).

    Under torchrun nothing is checkpointed during FP32 training (resuming is per process), and the model is
    written only once training has finished: a killed rank leaves no half-written file, and a re-run
    trains again from step 0.
    """
    text = str(error)
    if not info.enabled or not (isinstance(error, dist.DistError) or any(m in text.lower() for m in PEER_FAILURE_MARKS)):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return DiffquantError(
        f"torchrun: rank {info.rank} of {info.world_size} lost a peer process during FP32 training ({first}); "
        "nothing was saved; re-run the command to train again from step 0"
    )
