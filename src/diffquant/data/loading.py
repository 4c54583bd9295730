"""Call the `dataset._target_` loader and check what it returns, so a bad loader fails in one line before any work.

A loader returns `(train_images, heldout_images)`, `(train_images, heldout_images, train_labels,
heldout_labels)` or a `DataSplit`: float images [N, C, H, W] in [-1, 1] (square, the same size in both
splits), int labels [N] (all 0 when none are given). Images a little outside [-1, 1] (float rounding,
`RANGE_TOLERANCE`) are clamped; further out is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffquant.components import Component
from diffquant.data.datasets import DataSplit
from diffquant.errors import DiffquantError

RANGE_TOLERANCE = 1e-3
EXPECTED = (
    "a DataSplit, (train_images, heldout_images) or (train_images, heldout_images, train_labels, heldout_labels) "
    "with float images [N, C, H, W] in [-1, 1]"
)


def load_data(spec: Component, seed: int) -> DataSplit:
    """Call the loader with the node's arguments (and `seed` if it takes one) and validate its return value."""
    return as_split(spec.build(seed=seed), spec.target)


def as_split(result: Any, target: str) -> DataSplit:
    """A checked `DataSplit` from a loader's return value; anything else is a one-line error naming the loader."""
    where = f"dataset._target_={target}"
    if isinstance(result, DataSplit):
        parts: Sequence[Any] = (result.train_images, result.test_images, result.train_labels, result.test_labels)
    elif isinstance(result, (tuple, list)) and len(result) in (2, 4):
        parts = result
    else:
        raise DiffquantError(f"{where} returned {_describe(result)}; expected {EXPECTED}")
    train, heldout = (_images(parts[i], f"{where} {role} images") for i, role in ((0, "train"), (1, "held-out")))
    if train.shape[1:] != heldout.shape[1:]:
        raise DiffquantError(
            f"{where} returned train images of {_size(train)} but held-out images of {_size(heldout)}; "
            "expected one image size for both"
        )
    if len(parts) == 2:
        labels = torch.zeros(len(train), dtype=torch.int64), torch.zeros(len(heldout), dtype=torch.int64)
    else:
        labels = (
            _labels(parts[2], len(train), f"{where} train labels"),
            _labels(parts[3], len(heldout), f"{where} held-out labels"),
        )
    return DataSplit(train, labels[0], heldout, labels[1])


def _images(value: Any, what: str) -> Tensor:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        sizes = sorted({tuple(v.shape) for v in value})
        if len(sizes) > 1:
            shown = ", ".join("x".join(map(str, s)) for s in sizes[:3])
            raise DiffquantError(f"{what} have mixed sizes ({shown}{', ...' if len(sizes) > 3 else ''}); expected one size")
        value = torch.stack(list(value))
    if not isinstance(value, Tensor):
        raise DiffquantError(f"{what} are {_describe(value)}; expected a float tensor [N, C, H, W] in [-1, 1]")
    if value.ndim != 4:
        raise DiffquantError(f"{what} have shape {tuple(value.shape)}; expected 4 dims [N, C, H, W]")
    if not value.is_floating_point():
        raise DiffquantError(f"{what} are {value.dtype}; expected float images in [-1, 1] (e.g. uint8 / 127.5 - 1)")
    n, _, h, w = value.shape
    if n < 1 or h != w:
        raise DiffquantError(f"{what} have shape {tuple(value.shape)}; expected at least one square image [N, C, S, S]")
    value = value.detach().cpu().float()
    if not torch.isfinite(value).all():
        raise DiffquantError(f"{what} contain NaN or Inf; expected finite values in [-1, 1]")
    lo, hi = value.min().item(), value.max().item()
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise DiffquantError(f"{what} lie in [{lo:.4g}, {hi:.4g}]; expected values in [-1, 1] (scale x to x * 2 - 1 from [0, 1])")
    return value.clamp(-1.0, 1.0).contiguous()


def _labels(value: Any, n: int, what: str) -> Tensor:
    try:
        labels = value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise DiffquantError(f"{what} are {_describe(value)}; expected an int64 tensor of class labels [{n}]") from None
    if labels.ndim != 1 or len(labels) != n:
        raise DiffquantError(f"{what} have shape {tuple(labels.shape)}; expected one label per image, [{n}]")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DiffquantError(f"{what} are {labels.dtype}; expected integer class labels (int64)")
    if n and labels.min().item() < 0:
        raise DiffquantError(f"{what} include {labels.min().item()}; expected class labels 0..K-1")
    return labels.detach().cpu().to(torch.int64)


def _size(images: Tensor) -> str:
    return "x".join(map(str, images.shape[1:]))


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
