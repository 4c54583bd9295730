"""Conditional denoisers and classifier-free guidance (Ho & Salimans, 2022).

A conditional model is `forward(x_t, t, cond)`: `cond` is a class label [B] (int64) or an embedding
[B, L, D] (text-style, e.g. `encoder_hidden_states`). It says so by an attribute: `num_classes`
(labels 0..K-1, the null label K drops the class) or `cond_shape` ((L, D), the null condition is
zeros; its `cond_pool` [M, L, D] holds the conditions label k stands for, row k mod M). `Guide.bind(model, cond)` gives the sampler an ordinary `forward(x_t, t)` for one batch:
with a guidance scale s != 1 it evaluates the conditional and the unconditional pass in ONE
batched call and returns ε_u + s (ε_c − ε_u). `Guide.inputs` is that call's inputs: calibration
keeps them, so observers see exactly the activations a guided quantized model sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError


@dataclass(frozen=True)
class Guide:
    """How to condition one model: its null condition (one sample's), the class count (0: embeddings) and the scale.

    An embedding-conditioned model has a `pool` [M, L, D] of conditions (its `cond_pool`): label k
    stands for `pool[k % M]` (a prompt per class), so labelled data trains and evaluates it like a
    class-conditional model.
    """

    null: Tensor
    scale: float = 1.0
    num_classes: int = 0
    pool: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise DiffquantError(f"sampler.guidance_scale={self.scale} must be >= 0 (1: no guidance, 0: unconditional)")

    @property
    def batched(self) -> bool:
        """Whether each model call carries a conditional and an unconditional half."""
        return self.scale != 1.0

    def nulls(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The null condition repeated for `n` samples."""
        return self.null.to(device).expand(n, *self.null.shape).contiguous()

    def inputs(self, x: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model call's inputs: (x, t, cond), or with guidance both halves (conditional first) in one batch."""
        if not self.batched:
            return x, t, cond
        return torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond.to(x.device), self.nulls(x.shape[0], x.device)])

    def combine(self, eps: Tensor, n: int) -> Tensor:
        """ε of the guided prediction from the model's output on `inputs` (n samples)."""
        if not self.batched:
            return eps
        cond, uncond = eps[:n], eps[n:]
        return uncond + self.scale * (cond - uncond)

    def example(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Probe inputs for a conditional model: (x, t) with the null condition of each sample."""
        return x, t, self.nulls(x.shape[0], x.device)

    def bind(self, model: nn.Module, cond: Tensor) -> Bound:
        """`model` as a `forward(x_t, t)` denoiser for one batch with conditions `cond`."""
        return Bound(model, cond, self)

    @property
    def num_labels(self) -> int:
        """How many distinct labels the model tells apart: its classes, or its pool's rows."""
        return self.num_classes or (0 if self.pool is None else int(self.pool.shape[0]))

    def from_labels(self, labels: Tensor) -> Tensor:
        """The model's conditions for data labels: the labels themselves, or their pool rows (label mod M)."""
        if self.num_classes:
            return labels
        if self.pool is None:
            raise DiffquantError(
                "an embedding-conditioned model needs a pool of conditions to train or sample with (model.conditions)"
            )
        return self.pool[labels.cpu() % self.pool.shape[0]].to(labels.device)

    def requested_labels(self, n: int) -> Tensor:
        """The labels `n` samples ask for: 0..K-1 in turn (K: classes or pool rows)."""
        return torch.arange(n, dtype=torch.long) % max(self.num_labels, 1)

    def requested(self, n: int) -> Tensor:
        """The conditions `n` samples ask for (those of `requested_labels`)."""
        return self.from_labels(self.requested_labels(n))

    def check(self, cond: Tensor, setting: str, allow_null: bool = False) -> None:
        """Conditions must be labels within the class count (or the null class, for model inputs), or embeddings of the null's shape."""
        if self.num_classes:
            if cond.dtype != torch.long or cond.ndim != 1:
                raise DiffquantError(f"{setting}: class labels must be an int64 tensor [N], got {cond.dtype} {tuple(cond.shape)}")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes + allow_null):
                raise DiffquantError(
                    f"{setting}: labels {int(cond.min())}..{int(cond.max())} are outside the model's classes "
                    f"0..{self.num_classes - 1} (model.num_classes={self.num_classes})"
                )
        elif tuple(cond.shape[1:]) != tuple(self.null.shape):
            raise DiffquantError(
                f"{setting}: conditions of shape {tuple(cond.shape[1:])} per sample; the model takes {tuple(self.null.shape)}"
            )


class Bound(nn.Module):
    """A conditional model bound to one batch's conditions (and the guide): `forward(x_t, t) -> ε`."""

    def __init__(self, model: nn.Module, cond: Tensor, guide: Guide) -> None:
        super().__init__()
        self.model, self.cond, self.guide = model, cond, guide

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.guide.combine(self.model(*self.guide.inputs(x, t, self.cond.to(x.device))), x.shape[0])


def guide_for(model: nn.Module, scale: float = 1.0) -> Guide | None:
    """The model's guide from its `num_classes` / `cond_shape` attribute; None for an unconditional model."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes > 0:
        return Guide(torch.tensor(num_classes, dtype=torch.long), scale, num_classes)
    shape = getattr(model, "cond_shape", None)
    if shape:
        return Guide(torch.zeros(tuple(shape)), scale, pool=getattr(model, "cond_pool", None))
    if scale != 1.0:
        Guide(torch.zeros(()), scale)  # a negative scale is refused even here
        raise DiffquantError(
            f"sampler.guidance_scale={scale} needs a conditional model (model.num_classes > 0, e.g. experiment=class_cond); "
            "this model is unconditional: use sampler.guidance_scale=1"
        )
    return None


def drop_conditions(cond: Tensor, guide: Guide, p: float, generator: torch.Generator) -> Tensor:
    """Replace each sample's condition by the null one with probability `p` (classifier-free guidance training)."""
    if p <= 0:
        return cond
    drop = torch.rand(cond.shape[0], generator=generator) < p
    nulls = guide.nulls(cond.shape[0], cond.device)
    mask = drop.to(cond.device).view(-1, *([1] * (cond.ndim - 1)))
    return torch.where(mask, nulls, cond)
