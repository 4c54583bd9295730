"""The steps every eager quantization method shares: choose per-layer widths, prepare fake quantization,
calibrate, convert (or keep simulating), and describe the outcome."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

from torch import nn
from torch.ao import quantization as tq

from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData, run_calibration
from diffquant.quant.dynamic import use_dynamic_inputs, use_dynamic_int8_inputs
from diffquant.quant.execution.fast_int8 import speed_up_int8
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.lowrank import add_low_rank_branches
from diffquant.quant.lsq import to_device
from diffquant.quant.mixed_precision import Budget, MixedPlan, choose_bits, measure_layers
from diffquant.quant.plan import QuantContext, QuantOutcome, QuantPlan, float_layer_reasons
from diffquant.quant.rotation import rotate
from diffquant.quant.smoothing import smooth
from diffquant.quant.split import apply_split_shortcut, concat_splits
from diffquant.quant.timestep_scales import (
    ScriptedTimestepInt8,
    clock_of,
    scale_tables,
    split_by_group,
    use_timestep_inputs,
    use_timestep_int8_inputs,
)
from diffquant.quant.transpose import convert_mapping, qat_mapping
from diffquant.quant.wrap import fuse, wrap_layers


def choose_mixed_precision(
    plan: QuantPlan, model: nn.Module, ctx: QuantContext, budget: Budget | None
) -> tuple[QuantPlan, MixedPlan | None]:
    """The resolved plan with every wrapped layer's width chosen under `budget` (`mixed_precision.py`), named
    explicitly in `layer_bits`; unchanged without a budget."""
    if budget is None:
        return plan, None
    smoothing = ctx.calibration() if plan.smooth_alpha is not None else None

    def prepare_at(bits: int) -> tuple[nn.Module, list[str]]:  # the plan's own preparation, every layer at `bits`
        at = replace(plan, spec=replace(plan.spec, weight_bits=bits), layer_bits=())
        qmodel, wrapped, _ = prepare_fake_quant(model, at, False, smoothing, ctx.calib_batch_size)
        return qmodel, wrapped

    data = ctx.calibration().subset(budget.num_samples, seed=1)
    layers, fixed = measure_layers(
        prepare_at, model, budget, data, plan.spec.granularity, plan.spec.group_size, ctx.calib_batch_size
    )
    chosen = choose_bits(layers, budget, fixed)
    logging.getLogger("diffquant").info(chosen.summary())
    return replace(plan, layer_bits=tuple(chosen.layer_bits.items())), chosen


def prepare_fake_quant(
    model: nn.Module, plan: QuantPlan, qat: bool, data: CalibrationData | None = None, batch_size: int = 128
) -> tuple[nn.Module, list[str], list[list[str]]]:
    """Copy, fuse, rotate (`plan.rotate`), smooth (`plan.smooth_alpha`, on `data`), wrap, split off low-rank branches
    (`plan.lowrank_rank`) and `prepare_qat` a float model: every wrapped layer carries FakeQuantize modules, on the
    float model's device."""
    qmodel = copy.deepcopy(model).train(qat)
    fused = fuse(qmodel, qat=qat)
    if plan.rotate:  # before smoothing: SmoothQuant then measures the rotated inputs
        rotate(qmodel, plan.float_layers)
    if plan.smooth_alpha is not None:
        if data is None:
            raise DiffquantError("quant.smooth_alpha needs calibration pairs to measure the input channels' ranges")
        qmodel.eval()
        smooth(qmodel, data, plan.smooth_alpha, batch_size, plan.float_layers)
        qmodel.train(qat)
    wrapped = wrap_layers(qmodel, plan.qconfig_for, list(plan.float_layers))
    if not wrapped:
        kept = f" and quant.keep_float (layers {', '.join(plan.kept_float)})" if plan.kept_float else ""
        raise DiffquantError(f"quant.skip={list(plan.skip)}{kept} leaves no Conv2d / Linear layer to quantize")
    if plan.lowrank_rank:  # after smoothing and rotation: SVDQuant splits the weight the quantizer will see
        add_low_rank_branches(qmodel, wrapped, plan.lowrank_rank)
    qmodel.train()
    tq.prepare_qat(qmodel, mapping=qat_mapping(), inplace=True)
    if plan.dynamic_input and plan.spec.act_bits is not None:  # weight-only: inputs stay float, no scale to compute
        use_dynamic_inputs(qmodel, wrapped)
    if plan.timestep_groups > 1 and plan.spec.act_bits is not None:
        use_timestep_inputs(qmodel, wrapped, plan.timestep_groups, plan.num_timesteps)
    if plan.split_shortcut:
        apply_split_shortcut(qmodel, concat_splits(model), wrapped)
    to_device(qmodel, next(model.parameters()).device)  # the new quantizers join the weights (flags on the CPU)
    return qmodel, wrapped, fused


def calibrate(qmodel: nn.Module, ctx: QuantContext) -> None:
    """Observe activation and weight ranges on the trajectory pairs with fake quantization off."""
    qmodel.apply(tq.disable_fake_quant)
    qmodel.apply(tq.enable_observer)
    clock = clock_of(qmodel)
    # per-timestep tables: each group's observers see only that group's pairs, in uniform batches
    for part in [ctx.calibration()] if clock is None else split_by_group(ctx.calibration(), clock):
        run_calibration(qmodel, part, ctx.calib_batch_size, ctx.progress)
    qmodel.apply(tq.disable_observer)
    qmodel.apply(tq.enable_fake_quant)


def finalize(qmodel: nn.Module, plan: QuantPlan, wrapped: list[str]) -> tuple[nn.Module, str]:
    """Freeze ranges; convert to real int8 kernels where the plan allows, keep fake quantization otherwise."""
    qmodel.apply(tq.disable_observer)
    qmodel.eval()
    if not plan.runs_int8:
        return qmodel, "fakequant"
    clock = clock_of(qmodel)
    tables = scale_tables(qmodel, wrapped) if clock is not None else {}
    tq.convert(qmodel, mapping=convert_mapping(), inplace=True)
    if plan.dynamic_input:
        use_dynamic_int8_inputs(qmodel, wrapped, reduce_range=plan.spec.act_range()[1] == 127)
    speed_up_int8(qmodel)
    if clock is not None:
        use_timestep_int8_inputs(qmodel, wrapped, tables)
        return (ScriptedTimestepInt8(qmodel, clock) if plan.script else qmodel), "int8"
    return (ScriptedInt8(qmodel) if plan.script else qmodel), "int8"


def outcome_of(
    qmodel: nn.Module,
    execution: str,
    model: nn.Module,
    plan: QuantPlan,
    wrapped: list[str],
    fused: list[list[str]],
    seconds: float,
    **extra: Any,
) -> QuantOutcome:
    """The outcome of an eager method, with the float layers of `model` under `plan` and their reasons."""
    return QuantOutcome(
        qmodel, execution, wrapped, fused, seconds, float_layers=float_layer_reasons(model, plan, wrapped), **extra
    )


def trace_at(qmodel: nn.Module, data: CalibrationData, batch_size: int) -> float:
    """Trace a scripted int8 model at the sampling batch size now (sampling times exclude it); seconds taken."""
    if not isinstance(qmodel, ScriptedInt8):
        return 0.0
    qmodel.graph_for(*data.cycled(batch_size))
    return qmodel.trace_seconds
