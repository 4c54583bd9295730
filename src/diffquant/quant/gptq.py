"""GPTQ (Frantar et al., 2023): round each wrapped layer's weights column by column, feeding every column's
rounding error into the columns not yet rounded through the inverse Hessian of the layer's inputs.

For a layer y = W x, the output error of rounded weights Ŵ over the calibration inputs X is
tr((W − Ŵ) H (W − Ŵ)ᵀ) / 2 with H = 2 X Xᵀ / n. GPTQ rounds one input column at a time and updates the
rest optimally for that loss (Optimal Brain Quantization), in blocks of columns with lazy updates, from
the upper Cholesky factor of H⁻¹. Conv2d inputs are unfolded (im2col), so the weight is [out, in·kh·kw].

Layers are processed sequentially in call order: each layer's H comes from its inputs as they arrive in
the model whose earlier layers are already GPTQ-rounded and every layer fake-quantized (inputs too), as
the reference implementation does block by block. The rounding targets exactly the grid of the layer's
weight fake quantizer: its calibrated per-channel / per-tensor qparams, or (`quant.group_size`) group
scales computed from each group's columns as GPTQ reaches them and then frozen in the fake quantizer, so
the model's own fake quantization (and int8 conversion) reproduces GPTQ's weights exactly.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.ao.nn import qat as nnqat
from tqdm.auto import tqdm

from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.machine import pinned_threads
from diffquant.quant.number_formats import FormatFakeQuantize, group_qparams, on_group_grid


@dataclass(frozen=True)
class GPTQSettings:
    """`quant.gptq`: how many calibration pairs build each Hessian, its dampening, the block size, act-order."""

    num_samples: int = 256
    damp: float = 0.01  # added to H's diagonal, as a fraction of its mean
    block_size: int = 128  # columns per lazy batch update
    act_order: bool = False  # round columns in order of decreasing H diagonal (largest input energy first)
    freeze_groups: bool = True  # group-wise weights keep GPTQ's group scales (PTQ); QAT lets them follow training


class Grid:
    """The grid a layer's weight fake quantizer rounds onto, column by column (weights as [out, columns])."""

    def __init__(self, fake_quant: nn.Module) -> None:
        self.group = fake_quant.group_size if isinstance(fake_quant, FormatFakeQuantize) else 0
        if isinstance(fake_quant, FormatFakeQuantize) and (fake_quant.fmt != "int" or not self.group):
            raise DiffquantError(f"quant.gptq rounds onto integer grids; got a {fake_quant.extra_repr()} weight quantizer")
        self.fake_quant = fake_quant
        self.groups: dict[int, tuple[Tensor, Tensor]] = {}  # group index -> (scale, zero) [out, 1]

    def set_group(self, index: int, columns: Tensor) -> None:
        """Group `index`'s scale and zero point from its columns [out, group] (min-max, as `group_int`)."""
        self.groups[index] = group_qparams(columns, self.fake_quant.bits)

    def round(self, w: Tensor, column: int) -> Tensor:
        """Column `column` (of the original order) of the weight, `w` [out], rounded onto the grid."""
        fq = self.fake_quant
        if self.group:
            scale, zero = self.groups[column // self.group]
            return on_group_grid(w[:, None], scale, zero, fq.bits)[:, 0]
        if fq.is_per_channel:  # the very calls of FakeQuantize.forward, so the model rounds the same
            return torch.fake_quantize_per_channel_affine(w[:, None], fq.scale, fq.zero_point, 0, fq.quant_min, fq.quant_max)[
                :, 0
            ]
        return torch.fake_quantize_per_tensor_affine(w, fq.scale, fq.zero_point, fq.quant_min, fq.quant_max)

    def freeze(self) -> None:
        """Group-wise: make the fake quantizer round with the group scales GPTQ used."""
        if self.group:
            scales, zeros = zip(*(self.groups[g] for g in sorted(self.groups)))
            self.fake_quant.freeze_groups(torch.stack(scales, dim=1), torch.stack(zeros, dim=1))


def inverse_hessian_factor(hessian: Tensor, damp: float, name: str = "layer") -> Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, in float64."""
    h = hessian.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    factor, info = torch.linalg.cholesky_ex(h)
    if info:
        raise DiffquantError(f"quant.gptq: the Hessian of {name} is not positive definite; raise quant.gptq.damp (now {damp})")
    return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)


@torch.no_grad()
def gptq_weight(weight: Tensor, hessian: Tensor, grid: Grid, settings: GPTQSettings, name: str = "layer") -> tuple[Tensor, float]:
    """GPTQ-rounded `weight` [out, columns] for inputs of Hessian `hessian` [columns, columns], and its loss
    Σ (w − q)² / (2 [H⁻¹]_jj²) (the output error GPTQ's updates leave, up to the Hessian's scale)."""
    w = weight.detach().float().clone()
    h = hessian.double().clone()
    columns = w.shape[1]
    dead = h.diagonal() == 0  # inputs that were always zero: any weight is exact, take 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    group = grid.group
    static_groups = bool(group) and settings.act_order  # act-order visits groups out of order: scales from W up front
    if static_groups:
        for g in range(0, columns, group):
            grid.set_group(g // group, w[:, g : g + group])
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if settings.act_order else torch.arange(columns)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = inverse_hessian_factor(h, settings.damp, name).float()
    q = torch.zeros_like(w)
    losses = torch.zeros_like(w)
    block = max(1, settings.block_size // group) * group if group else settings.block_size  # groups never straddle blocks
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        errors = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if group and not static_groups and col % group == 0:  # this group's columns carry every update so far
                grid.set_group(col // group, w1[:, i : i + group])
            q[:, col] = grid.round(w1[:, i], int(perm[col]))
            err = (w1[:, i] - q[:, col]) / h1[i, i]
            losses[:, col] = err.square() / 2
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            errors[:, i] = err
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]  # the lazy update of every later block at once
    return q[:, torch.argsort(perm)], float(losses.sum())


def input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's inputs as rows matching its weight's columns: im2col for Conv2d, last axis for Linear."""
    if isinstance(layer, nn.Conv2d):
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = nn.functional.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        cols = nn.functional.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class _Reached(Exception):
    """Raised by the Hessian hook after the layer's last call in a forward: the rest of the model is not needed."""


class HessianHook:
    """Forward pre-hook that sums XᵀX of a layer's inputs; stops the forward after `calls` calls of it."""

    def __init__(self, layer: nn.Module, calls: int) -> None:
        columns = layer.weight[0].numel()
        self.sum = torch.zeros(columns, columns, dtype=torch.float64, device=layer.weight.device)
        self.rows, self.calls, self.seen = 0, calls, 0

    def __call__(self, layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        for chunk in args[0].detach().split(16):  # bounded im2col memory on large feature maps
            rows = input_rows(layer, chunk).double()
            self.sum += rows.T @ rows
            self.rows += rows.shape[0]
        self.seen += 1
        if self.seen == self.calls:
            raise _Reached

    def hessian(self) -> Tensor:
        return 2 * self.sum / max(self.rows, 1)


def supports(layer: nn.Module) -> bool:
    """Layers whose forward multiplies the fake-quantized `weight` as is: QAT Linear / Conv2d (with ReLU), ungrouped."""
    return isinstance(layer, (nnqat.Linear, nnqat.Conv2d)) and getattr(layer, "groups", 1) == 1


@torch.no_grad()
def call_order(qmodel: nn.Module, wrapped: list[str], data: CalibrationData) -> tuple[list[str], Counter[str]]:
    """The wrapped layers in the order a forward first calls them, and how often one forward calls each."""
    calls: list[str] = []
    handles = [
        qmodel.get_submodule(name).module.register_forward_pre_hook(lambda _m, _a, n=name: calls.append(n)) for name in wrapped
    ]
    try:
        qmodel(*data.rows(slice(0, 1)))
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(calls)), Counter(calls)


@torch.no_grad()
def layer_hessian(qmodel: nn.Module, layer: nn.Module, calls: int, data: CalibrationData, batch_size: int) -> Tensor:
    """H = 2 X Xᵀ / n of `layer`'s inputs in `qmodel` over `data`, each forward stopped after the layer's last call."""
    hook = HessianHook(layer, calls)
    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in data.batches(batch_size):
            hook.seen = 0
            try:
                qmodel(*batch)
            except _Reached:
                pass
    finally:
        handle.remove()
    return hook.hessian()


@torch.no_grad()
def gptq(
    qmodel: nn.Module,
    wrapped: list[str],
    data: CalibrationData,
    settings: GPTQSettings,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """GPTQ-round every wrapped layer's weight in place, in call order; return each layer's GPTQ loss."""
    log = logging.getLogger("diffquant")
    start, was_training = time.perf_counter(), qmodel.training
    qmodel.eval()
    losses: dict[str, float] = {}
    with pinned_threads(1):  # the roundings are discrete decisions on the Hessian's last bits
        order, counts = call_order(qmodel, wrapped, data)
        for name in tqdm(order, desc="gptq", disable=not progress, leave=False):
            layer = qmodel.get_submodule(name).module
            if not supports(layer):
                log.info("GPTQ leaves %s (%s) rounded to nearest", name, type(layer).__name__)
                continue
            hessian = layer_hessian(qmodel, layer, counts[name], data, batch_size)
            grid = Grid(layer.weight_fake_quant)
            rounded, losses[name] = gptq_weight(layer.weight.reshape(layer.weight.shape[0], -1), hessian, grid, settings, name)
            layer.weight.copy_(rounded.reshape(layer.weight.shape))
            if settings.freeze_groups:
                grid.freeze()
    qmodel.train(was_training)
    log.info("GPTQ: %d layers on %d calibration pairs in %.1f s", len(losses), len(data), time.perf_counter() - start)
    return losses
