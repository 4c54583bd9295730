"""Periodic training checkpoints that let a killed FP32 or QAT run resume exactly where it stopped.

A checkpoint holds everything the next step depends on: model, EMA, optimizer, LR scheduler, the
global RNG states, the named generators that draw batches, timesteps and noise, the step and the
loss history. It is written atomically and carries a key; a file made for another run is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffquant.cache.store import atomic_torch_save, load_or_none


@dataclass
class TrainState:
    """What a resumed loop restores: the step to start from and the losses of the steps before it."""

    step: int = 0
    losses: list[float] = field(default_factory=list)


@dataclass
class Checkpointer:
    """Save the training state to `path` every `every` steps (and at the end when `keep_final`)."""

    path: Path
    key: str
    every: int
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    keep_final: bool = False  # keep the finished state (QAT: a re-run skips the fine-tuning)

    def due(self, done_steps: int, total: int) -> bool:
        """True when a checkpoint should be written after `done_steps` of `total` steps."""
        if done_steps == total:
            return self.keep_final
        return self.every > 0 and done_steps % self.every == 0

    def save(
        self,
        state: TrainState,
        model: nn.Module,
        ema: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """Write the full state atomically (a kill mid-write leaves the previous checkpoint intact)."""
        blob: dict[str, Any] = {
            "key": self.key,
            "step": state.step,
            "losses": list(state.losses),
            "model": model.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }
        atomic_torch_save(blob, self.path)

    def restore(
        self,
        model: nn.Module,
        ema: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> TrainState:
        """Load the last checkpoint into the given objects; a missing, unreadable or foreign file starts at step 0."""
        log = logging.getLogger("diffquant")
        blob = load_or_none(self.path, "Training checkpoint", "starting from step 0", weights_only=False)
        if blob is None:
            return TrainState()
        if not isinstance(blob, dict) or blob.get("key") != self.key or set(blob.get("generators", {})) != set(self.generators):
            log.warning("Training checkpoint %s belongs to another run; starting from step 0", self.path)
            return TrainState()
        model.load_state_dict(blob["model"])
        if ema is not None and blob["ema"] is not None:
            ema.load_state_dict(blob["ema"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        for name, g in self.generators.items():
            g.set_state(blob["generators"][name])
        log.info("Resuming from %s at step %d", self.path, blob["step"])
        return TrainState(int(blob["step"]), list(blob["losses"]))
