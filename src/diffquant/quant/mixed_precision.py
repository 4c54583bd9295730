"""Mixed precision under a budget: one weight width per layer, chosen by measured sensitivity (MixDQ, BitsFusion).

Each wrapped layer's error at each candidate width is measured alone (`layer_errors`): its relative output
error ‖y_q − y‖² / ‖y‖² (1/SQNR) on the calibration pairs, with only its weight quantized and its input the
FP32 model's. The estimated loss of a plan is the sum of its layers' errors (downstream amplification and
activation errors are not modelled). `solve` picks the plan: a multiple-choice knapsack, by dynamic
programming over a cost grid. Bytes (`layer_bytes`): a quantized layer's weight packed at b bits,
ceil(numel·b/8), plus 8 bytes (float32 scale, int32 zero point, as its fake quantizer holds them) per
channel / group / tensor; every other tensor of the FP32 state_dict (float layers, biases, norms) and any
low-rank branch at its float size (4 bytes per parameter).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.ao import quantization as tq

from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.capture import capture
from diffquant.quant.size import layer_bytes, scale_count, tensor_bytes
from diffquant.quant.timestep_scales import clock_of

MAX_CELLS = 200_000  # cost-grid cells of the DP: exact below this many gcd-sized steps of budget, else rounded up


@dataclass(frozen=True)
class Budget:
    """What the plan must fit: total bytes (`size_bytes`) or numel-weighted average weight bits (`avg_bits`)."""

    size_bytes: int | None
    avg_bits: float | None
    bits: tuple[int, ...]  # candidate widths, ascending
    num_samples: int = 128


@dataclass(frozen=True)
class Layer:
    """One quantized layer: weight elements and scale count (its bytes at any width), error per candidate width."""

    name: str
    numel: int
    scales: int
    errors: tuple[float, ...]


def solve(costs: list[list[int]], errors: list[list[float]], budget: int, max_cells: int = MAX_CELLS) -> tuple[list[int], bool]:
    """One option per row with Σ cost ≤ `budget` and the least Σ error; returns (choices, exact).

    Dynamic programming over cost cells, relative to every row's cheapest option. The cell is the gcd of
    the costs where the budget spans at most `max_cells` of them (exact); else costs are rounded up to a
    coarser cell (`exact` False): the plan still fits, its loss may exceed the optimum slightly.
    """
    base = [min(row) for row in costs]
    room = budget - sum(base)
    if room < 0:
        raise ValueError(f"budget {budget} is below the cheapest plan {sum(base)}")
    extra = [[c - b for c in row] for row, b in zip(costs, base)]
    step = math.gcd(*(c for row in extra for c in row)) or 1
    cell = max(step, math.ceil(room / max_cells))
    exact = cell == step
    cells = room // cell
    dp = torch.zeros(cells + 1, dtype=torch.float64)  # least error of the rows so far within c cells
    picks = torch.zeros(len(costs), cells + 1, dtype=torch.int16)
    for j, (row, errs) in enumerate(zip(extra, errors)):
        best = torch.full_like(dp, math.inf)
        for k, (cost, err) in enumerate(zip(row, errs)):
            w = math.ceil(cost / cell)
            if w > cells:
                continue
            cand = torch.full_like(dp, math.inf)
            cand[w:] = dp[: cells + 1 - w] + err
            better = cand < best  # strict: among equal losses the earlier (cheaper, fewer bits) option stays
            best = torch.where(better, cand, best)
            picks[j][better] = k
        dp = best
    choice, c = [0] * len(costs), cells
    for j in reversed(range(len(costs))):
        choice[j] = int(picks[j][c])
        c -= math.ceil(extra[j][choice[j]] / cell)
    return choice, exact


@torch.no_grad()
def layer_errors(
    qmodel: nn.Module, fp_model: nn.Module, wrapped: list[str], data: CalibrationData, batch_size: int = 64
) -> dict[str, float]:
    """Each wrapped layer's relative output error with only its own weight fake-quantized, on its float input.

    `qmodel` is prepared (not calibrated); with every quantizer off it computes the float function, including
    smoothing, rotation and low-rank branches, so its layer outputs are the references. Inputs come from
    `fp_model`: a wrapper's own pre-hooks (smoothing, rotation) run when it is called, so they must not be in them.
    """
    qmodel.eval().apply(tq.disable_observer)
    qmodel.apply(tq.disable_fake_quant)
    inputs = capture(fp_model, wrapped, data, batch_size, outputs=False)  # a fused group's first layer keeps the name
    seen = capture(qmodel, wrapped, data, batch_size, inputs=False)
    clock = clock_of(qmodel)  # per-timestep input quantizers: a layer called alone needs its rows' t
    errors: dict[str, float] = {}
    for name in wrapped:
        layer = qmodel.get_submodule(name)
        fq = layer.module.weight_fake_quant
        fq.apply(tq.enable_observer)  # the weight's own range: the first call observes it, later calls agree
        fq.apply(tq.enable_fake_quant)
        noise = signal = 0.0
        for x, t, ref in zip(
            inputs[name]["args"][0].split(batch_size), data.t.split(batch_size), seen[name]["out"][0].split(batch_size)
        ):
            if clock is not None:
                clock.set(t)
            noise += float((layer(x) - ref).double().pow(2).sum())
            signal += float(ref.double().pow(2).sum())
        fq.apply(tq.disable_observer)
        fq.apply(tq.disable_fake_quant)
        errors[name] = noise / max(signal, 1e-30)
    return errors


@dataclass(frozen=True)
class MixedPlan:
    """The chosen widths, what they cost and their estimated loss (results.json `mixed_precision`)."""

    layer_bits: dict[str, int]
    budget: Budget
    achieved_bytes: int
    min_bytes: int
    avg_weight_bits: float
    est_loss: float
    exact: bool
    errors: dict[str, dict[int, float]]

    def as_dict(self) -> dict[str, Any]:
        """The results.json block."""
        return {
            "budget_bytes": self.budget.size_bytes,
            "budget_avg_bits": self.budget.avg_bits,
            "achieved_bytes": self.achieved_bytes,
            "min_bytes": self.min_bytes,
            "avg_weight_bits": self.avg_weight_bits,
            "est_loss": self.est_loss,
            "candidate_bits": list(self.budget.bits),
            "exact": self.exact,
            "layer_bits": dict(self.layer_bits),
            "layer_errors": {name: {str(b): e for b, e in errs.items()} for name, errs in self.errors.items()},
        }

    def override(self) -> str:
        """The plan as a command-line override: `'+quant.layer_bits={name: bits, ...}'` (drop the budget with it)."""
        return "'+quant.layer_bits={" + ", ".join(f"{n}: {b}" for n, b in self.layer_bits.items()) + "}'"

    def summary(self) -> str:
        """One log line: how many layers at which width, bytes against the budget, the loss estimate, the override."""
        counts = ", ".join(f"{sum(b == w for b in self.layer_bits.values())} at W{w}" for w in self.budget.bits)
        limit = f"{self.budget.size_bytes} budget bytes" if self.budget.avg_bits is None else f"avg {self.budget.avg_bits} bits"
        return (
            f"Mixed precision: {counts}; {self.achieved_bytes} bytes ({limit}), avg {self.avg_weight_bits:.3f} weight bits, "
            f"est. loss {self.est_loss:.4g}; reuse: {self.override()}"
        )


def choose_bits(layers: list[Layer], budget: Budget, fixed_bytes: int, max_cells: int = MAX_CELLS) -> MixedPlan:
    """The least-loss widths within `budget`; a budget below every layer at its lowest width is refused."""
    bits = budget.bits
    sizes = [[layer_bytes(la.numel, la.scales, b) for b in bits] for la in layers]
    min_bytes = fixed_bytes + sum(row[0] for row in sizes)
    if budget.size_bytes is not None:
        if budget.size_bytes < min_bytes:
            raise DiffquantError(
                f"quant.size_budget_bytes={budget.size_bytes} is below the smallest achievable size, {min_bytes} bytes "
                f"(every quantized layer at {bits[0]} bits, float tensors at their size); allowed: >= {min_bytes}"
            )
        costs, limit = sizes, budget.size_bytes - fixed_bytes
    else:
        assert budget.avg_bits is not None
        costs = [[la.numel * b for b in bits] for la in layers]  # weight bits: scales are not weight elements
        limit = math.floor(budget.avg_bits * sum(la.numel for la in layers) + 1e-9)
    choice, exact = solve(costs, [list(la.errors) for la in layers], limit, max_cells)
    chosen = {la.name: bits[k] for la, k in zip(layers, choice)}
    total = sum(la.numel for la in layers)
    return MixedPlan(
        layer_bits=chosen,
        budget=budget,
        achieved_bytes=fixed_bytes + sum(row[k] for row, k in zip(sizes, choice)),
        min_bytes=min_bytes,
        avg_weight_bits=sum(la.numel * chosen[la.name] for la in layers) / max(total, 1),
        est_loss=sum(la.errors[k] for la, k in zip(layers, choice)),
        exact=exact,
        errors={la.name: dict(zip(bits, la.errors)) for la in layers},
    )


def measure_layers(
    prepare_at: Callable[[int], tuple[nn.Module, list[str]]],
    fp_model: nn.Module,
    budget: Budget,
    data: CalibrationData,
    granularity: str,
    group_size: int,
    batch_size: int = 64,
) -> tuple[list[Layer], int]:
    """Every wrapped layer's errors at the candidate widths (`prepare_at(bits)`: a model prepared at that width),
    and the bytes that do not depend on the plan: `fp_model`'s state_dict less the quantized weights, plus low-rank branches."""
    per_bits: list[dict[str, float]] = []
    for b in budget.bits:
        qmodel, wrapped = prepare_at(b)
        per_bits.append(layer_errors(qmodel, fp_model, wrapped, data, batch_size))
    layers, fixed = [], tensor_bytes(fp_model)
    for name in wrapped:
        wrapper = qmodel.get_submodule(name)
        inner = wrapper.module
        fixed -= inner.weight.numel() * inner.weight.element_size()
        branch = getattr(wrapper, "lowrank", None)  # SVDQuant's float branch: extra float bytes
        fixed += sum(p.numel() * p.element_size() for p in branch.parameters()) if branch is not None else 0
        errs = tuple(errors[name] for errors in per_bits)
        layers.append(Layer(name, inner.weight.numel(), scale_count(inner, granularity, group_size), errs))
    return layers, fixed
