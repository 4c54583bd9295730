"""Learned weight rounding: AdaRound layer by layer (Nagel et al., 2020) or BRECQ block by block (Li et al., 2021).

Each unit (a wrapped layer, or a block such as a ResBlock) is run on its inputs as they arrive in
the partly quantized model, and the rounding of its weights is learned so that its output matches
the FP32 unit's output on the calibration pairs. Ranges (scales, zero points) stay as calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.quant.calibration import CalibrationData
from diffquant.quant.capture import capture


@dataclass(frozen=True)
class ReconSettings:
    """`quant.recon`: which units, how long, how hard to push the rounding towards 0 / 1."""

    method: str = "adaround"  # adaround | brecq
    iters: int = 300
    lr: float = 1e-2
    batch_size: int = 32
    reg_weight: float = 0.01
    block_types: tuple[str, ...] = ("ResBlock", "AttnBlock")


class AdaRoundWeight(nn.Module):
    """Stands in for a layer's weight FakeQuantize: W̃ = s·(clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) − z)."""

    zeta, gamma = 1.1, -0.1

    def __init__(self, weight: Tensor, fake_quant: nn.Module) -> None:
        super().__init__()
        shape = (-1,) + (1,) * (weight.dim() - 1) if fake_quant.scale.numel() > 1 else (1,) * weight.dim()
        self.register_buffer("scale", fake_quant.scale.detach().float().reshape(shape))
        self.register_buffer("zero_point", fake_quant.zero_point.detach().float().reshape(shape))
        self.qmin, self.qmax = float(fake_quant.quant_min), float(fake_quant.quant_max)
        scaled = weight.detach() / self.scale
        self.register_buffer("floor", scaled.floor())
        rest = (scaled - scaled.floor()).clamp(0.01, 0.99)
        self.alpha = nn.Parameter(torch.log((rest - self.gamma) / (self.zeta - rest)))  # h(alpha) = rest
        self.hard = False

    def h(self) -> Tensor:
        return (torch.sigmoid(self.alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)

    def forward(self, _weight: Tensor) -> Tensor:
        up = (self.h() >= 0.5).float() if self.hard else self.h()
        return self.scale * ((self.floor + up + self.zero_point).clamp(self.qmin, self.qmax) - self.zero_point)

    def regularizer(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def units_for(qmodel: nn.Module, wrapped: list[str], settings: ReconSettings) -> list[str]:
    """Units in forward (registration) order: blocks of `block_types` for BRECQ, else each wrapped layer."""
    if settings.method != "brecq":
        return list(wrapped)
    blocks = [n for n, m in qmodel.named_modules() if type(m).__name__ in settings.block_types]
    blocks = [b for b in blocks if not any(b.startswith(f"{o}.") for o in blocks)]
    loose = [w for w in wrapped if not any(w.startswith(f"{b}.") for b in blocks)]
    order = {name: i for i, (name, _) in enumerate(qmodel.named_modules())}
    return sorted(blocks + loose, key=order.__getitem__)


def reconstruct(
    qmodel: nn.Module,
    fp_model: nn.Module,
    wrapped: list[str],
    data: CalibrationData,
    settings: ReconSettings,
    progress: bool = False,
) -> dict[str, float]:
    """Learn the rounding of every wrapped layer, unit by unit; return each unit's final output MSE."""
    units = units_for(qmodel, wrapped, settings)
    targets = capture(fp_model, units, data, settings.batch_size * 4, inputs=False)
    losses: dict[str, float] = {}
    for unit in tqdm(units, desc=f"{settings.method}", disable=not progress):
        args = capture(qmodel, [unit], data, settings.batch_size * 4, outputs=False)[unit]["args"]
        layers = [qmodel.get_submodule(w).module for w in wrapped if w == unit or w.startswith(f"{unit}.")]
        losses[unit] = _fit_unit(qmodel.get_submodule(unit), layers, args, targets[unit]["out"][0], settings)
    return losses


def _fit_unit(unit: nn.Module, layers: list[nn.Module], args: list[Tensor], target: Tensor, settings: ReconSettings) -> float:
    originals = [layer.weight_fake_quant for layer in layers]
    rounders = [AdaRoundWeight(layer.weight, fq) for layer, fq in zip(layers, originals)]
    for layer, rounder in zip(layers, rounders):
        layer.weight_fake_quant = rounder
    optimizer = torch.optim.Adam([r.alpha for r in rounders], lr=settings.lr)
    generator = torch.Generator().manual_seed(0)
    n, warmup = target.shape[0], int(0.2 * settings.iters)
    for it in range(settings.iters):
        idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=generator)
        loss = nn.functional.mse_loss(unit(*(a[idx] for a in args)), target[idx], reduction="sum") / len(idx)
        if it >= warmup:  # anneal beta 20 -> 2: first free rounding, then pushed to a hard decision
            beta = 20 - 18 * (it - warmup) / max(settings.iters - warmup, 1)
            loss = loss + settings.reg_weight * sum(r.regularizer(beta) for r in rounders)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for layer, rounder, original in zip(layers, rounders, originals):
            rounder.hard = True
            layer.weight.copy_(rounder(layer.weight))  # on the grid: the original fake quant keeps it exact
            layer.weight_fake_quant = original
        return float(nn.functional.mse_loss(unit(*args), target))
