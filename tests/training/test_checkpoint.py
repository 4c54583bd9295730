"""Resumable training: a run stopped mid-way and resumed equals an uninterrupted one; guards keep the last good state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffquant.data.datasets import iterate_batches
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.errors import DiffquantError
from diffquant.models.unet import UNet
from diffquant.training.checkpoint import Checkpointer
from diffquant.training.loop import TrainSettings, epsilon_loss, train_diffusion

SETTINGS = TrainSettings(steps=12, lr=2e-3, warmup_steps=3, ema_decay=0.9, log_every=1, schedule="cosine")
IMAGES = torch.rand(40, 1, 8, 8) * 2 - 1


class Stop(Exception):
    """Stands in for a kill between two steps."""


def run(path: Path | None, stop_at: int | None = None, every: int = 4) -> tuple[nn.Module, list[float]]:
    """Train the tiny model from seed 0; optionally checkpoint to `path` and stop before step `stop_at`."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8, dropout=0.1)
    gen = torch.Generator().manual_seed(0)
    ckpt = Checkpointer(path, "run-a", every, {"data": gen}) if path is not None else None

    def maybe_stop(step: int) -> None:
        if step == stop_at:
            raise Stop

    loss = epsilon_loss(GaussianDiffusion(linear_betas(100)), gen)
    return train_diffusion(
        model, loss, iterate_batches(IMAGES, 8, gen), SETTINGS, on_step=maybe_stop, progress=False, checkpointer=ckpt
    )


def test_resumed_run_equals_uninterrupted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference, ref_losses = run(None)
    path = tmp_path / "state.pt"
    with pytest.raises(Stop):
        run(path, stop_at=10)  # checkpoints after steps 4 and 8; steps 8 and 9 are lost
    assert torch.load(path, weights_only=False)["step"] == 8
    with caplog.at_level("INFO", logger="diffquant"):
        resumed, losses = run(path)
    assert "at step 8" in caplog.text
    assert losses == ref_losses  # the 8 restored losses, then 4 recomputed ones, bit for bit
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_of_another_run_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(Stop):
        run(path, stop_at=5)
    blob = torch.load(path, weights_only=False)
    blob["key"] = "run-b"
    torch.save(blob, path)
    with caplog.at_level("WARNING", logger="diffquant"):
        _, losses = run(path)
    assert "belongs to another run" in caplog.text
    assert losses == run(None)[1]


def test_truncated_checkpoint_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.pt"
    with pytest.raises(Stop):
        run(path, stop_at=5)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="diffquant"):
        _, losses = run(path)
    assert "unreadable" in caplog.text and len(losses) == SETTINGS.steps


def test_nan_weight_stops_at_its_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    model = nn.Linear(4, 4)
    path = tmp_path / "state.pt"
    ckpt = Checkpointer(path, "k", 2, {})

    def loss_fn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(x).pow(2).mean()

    calls: list[int] = []  # the gradient of step 5 carries a NaN into the weights; the loss stays finite
    model.weight.register_hook(lambda g: g * float("nan") if len(calls) == 6 else g)
    with pytest.raises(DiffquantError, match=r"train: a weight became NaN/Inf at step 5; lower train.lr .*state.pt is kept"):
        train_diffusion(
            model,
            loss_fn,
            iter(lambda: torch.randn(3, 4), None),
            TrainSettings(steps=10, lr=1e-2, grad_clip=0),
            progress=False,
            checkpointer=ckpt,
        )
    blob = torch.load(path, weights_only=False)
    assert blob["step"] == 4 and all(torch.isfinite(v).all() for v in blob["model"].values())


def test_nan_loss_names_the_step() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(DiffquantError, match=r"qat: the loss became nan at step 0; lower quant.qat.lr"):
        train_diffusion(
            model,
            lambda m, x: m(x).sum() * float("nan"),
            iter(lambda: torch.ones(1, 2), None),
            TrainSettings(steps=3, lr=1e-3),
            tag="qat",
            progress=False,
        )


def test_cache_entry_with_altered_weights_fails_its_checksum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from diffquant.cache.artifacts import cache_blob, load_cache_entry

    path = tmp_path / "model.pt"
    torch.save(cache_blob(nn.Linear(3, 2).state_dict(), "k", accuracy=0.9), path)
    assert load_cache_entry(path, "k")["accuracy"] == 0.9
    blob = torch.load(path, weights_only=False)
    blob["state_dict"]["weight"][0, 0] += 1.0  # readable, right key, wrong bytes
    torch.save(blob, path)
    with caplog.at_level("WARNING", logger="diffquant"):
        assert load_cache_entry(path, "k") is None
    assert "fails its checksum" in caplog.text
