"""One training loop for FP32 diffusion training and quantization-aware fine-tuning."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.diffusion.guidance import Guide, drop_conditions
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError
from diffquant.training.checkpoint import Checkpointer, TrainState
from diffquant.training.distributed import wrap_for_training


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
    schedule: str = "constant"  # constant | cosine (after warmup)
    device: str = "cpu"
    bf16: bool = False  # bf16 autocast of the forward pass (FP32 training on GPUs)


def lr_factor(step: int, warmup: int, settings: TrainSettings) -> float:
    """Linear warmup, then constant or cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    if settings.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(settings.steps - warmup, 1)))
    return 1.0


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


LossFn = Callable[[nn.Module, Any], Tensor]


def epsilon_loss(diffusion: GaussianDiffusion, generator: torch.Generator) -> LossFn:
    """The DDPM objective on clean images: ‖ε − ε_θ(x_t, t)‖² at uniformly drawn t."""
    return lambda model, x0: diffusion.training_loss(model, x0, generator)


def conditional_epsilon_loss(diffusion: GaussianDiffusion, generator: torch.Generator, guide: Guide, dropout: float) -> LossFn:
    """The DDPM objective on (images, labels) batches; each label's condition is dropped to the null one with
    probability `dropout`, so the model also learns the unconditional ε of classifier-free guidance."""

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x0, labels = batch
        return diffusion.training_loss(
            model, x0, generator, drop_conditions(guide.from_labels(labels), guide, dropout, generator)
        )

    return loss


def distillation_loss(
    teacher: nn.Module,
    diffusion: GaussianDiffusion,
    generator: torch.Generator,
    data_weight: float,
    distill_weight: float,
    conditioning: tuple[Guide, float] | None = None,
) -> LossFn:
    """QAT on images: data_weight·‖ε − ε_s‖² + distill_weight·‖ε_teacher − ε_s‖² at the same (x_t, t[, cond]).

    With `conditioning` (guide, dropout) batches are (images, labels), their conditions dropped to the null
    condition as in FP32 training, so both halves of a guided call are distilled.
    """

    def loss(student: nn.Module, batch: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if conditioning is None:
            x0, cond = batch, ()
        else:
            guide, dropout = conditioning
            x0, cond = batch[0], (drop_conditions(guide.from_labels(batch[1]), guide, dropout, generator),)
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = diffusion.q_sample(x0, t, noise)
        eps = student(x_t, t, *cond)
        with torch.no_grad():
            target = teacher(x_t, t, *cond)
        return data_weight * nn.functional.mse_loss(eps, noise) + distill_weight * nn.functional.mse_loss(eps, target)

    return loss


def trajectory_distillation_loss(teacher: nn.Module) -> LossFn:
    """Data-free QAT: batches are (x_t, t[, cond]) rows of the teacher's own sampling trajectories."""

    def loss(student: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        with torch.no_grad():
            target = teacher(*batch)
        return nn.functional.mse_loss(student(*batch), target)

    return loss


def train_diffusion(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterator[Any],
    settings: TrainSettings,
    *,
    log_scalar: Callable[[str, float, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    tag: str = "train",
    progress: bool = True,
    checkpointer: Checkpointer | None = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Minimise `loss_fn(model, batch)`; return (EMA model if enabled else the model, loss per step).

    `on_step(step)` runs before each step (QAT uses it to freeze observers); it must be idempotent
    for steps past its trigger, because a resumed run starts at the checkpoint's step.
    `checkpointer` saves the state periodically and resumes from its last save.
    `param_groups` replaces `model.parameters()` in the optimizer (e.g. a lower LR for step sizes).
    The model and each batch are moved to `settings.device`; the model is returned there.
    """
    device = torch.device(settings.device)
    if next(model.parameters()).device.type != device.type:  # a model placed there already keeps its layout
        model.to(device)
    model.train().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups or params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(settings.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, settings))
    ema = EMA(model, settings.ema_decay) if settings.ema_decay else None
    net = wrap_for_training(model)  # DDP under torchrun: same model, gradients averaged over processes
    state = TrainState()
    if checkpointer is not None:
        state = checkpointer.restore(model, ema.model if ema else None, optimizer, scheduler)
    losses = state.losses
    bar = tqdm(range(state.step, settings.steps), desc=tag, disable=not progress, initial=state.step, total=settings.steps)
    for step in bar:
        if on_step is not None:
            on_step(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = loss_fn(net, _to(next(batches), device))
        if not torch.isfinite(loss):
            raise NonFiniteError(tag, f"the loss became {loss.item()}", step, checkpointer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        if not _all_finite(params):
            raise NonFiniteError(tag, "a weight became NaN/Inf", step, checkpointer)
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        if step % settings.log_every == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if log_scalar is not None:
                log_scalar(f"{tag}/loss", losses[-1], step)
                log_scalar(f"{tag}/lr", scheduler.get_last_lr()[0], step)
        if checkpointer is not None and checkpointer.due(step + 1, settings.steps):
            checkpointer.save(TrainState(step + 1, losses), model, ema.model if ema else None, optimizer, scheduler)
    model.eval()
    return (ema.model if ema is not None else model), losses


def _to(batch: Any, device: torch.device) -> Any:
    """Move a tensor or a tuple of tensors to `device` (a no-op where it already lives)."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    return tuple(_to(b, device) for b in batch)


def _all_finite(params: list[Tensor]) -> bool:
    """One reduction over every parameter: NaN or Inf anywhere makes the sum non-finite."""
    return bool(torch.isfinite(torch.stack([p.detach().sum() for p in params]).sum()))


class NonFiniteError(DiffquantError):
    """Training stopped on a NaN/Inf loss or weight; the last good checkpoint (if any) is kept."""

    def __init__(self, tag: str, what: str, step: int, checkpointer: Checkpointer | None) -> None:
        kept = (
            f"; the last good checkpoint {checkpointer.path} is kept"
            if checkpointer is not None and checkpointer.path.is_file()
            else ""
        )
        setting = "quant.qat.lr" if tag == "qat" else f"{tag}.lr"
        super().__init__(f"{tag}: {what} at step {step}; lower {setting} or check the data{kept}")
        self.step = step
