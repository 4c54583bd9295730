"""One training loop for FP32 diffusion training and quantization-aware fine-tuning."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and loop settings shared by FP32 training and QAT."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    ema_decay: float | None = None
    log_every: int = 25


class EMA:
    """Exponential moving average of a model's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def train_diffusion(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    batches: Iterator[Tensor],
    settings: TrainSettings,
    *,
    generator: torch.Generator,
    log_scalar: Callable[[str, float, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    tag: str = "train",
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Minimise the ε-prediction loss; return (EMA model if enabled else the model, loss per step).

    `on_step(step)` runs before each step (QAT uses it to freeze observers).
    """
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(settings.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    ema = EMA(model, settings.ema_decay) if settings.ema_decay else None
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc=tag, disable=not progress)
    for step in bar:
        if on_step is not None:
            on_step(step)
        loss = diffusion.training_loss(model, next(batches), generator)
        if not torch.isfinite(loss):
            raise DiffquantError(f"{tag}: the loss became {loss.item()} at step {step}; lower {tag}.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        if step % settings.log_every == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if log_scalar is not None:
                log_scalar(f"{tag}/loss", losses[-1], step)
                log_scalar(f"{tag}/lr", scheduler.get_last_lr()[0], step)
    model.eval()
    return (ema.model if ema is not None else model), losses
