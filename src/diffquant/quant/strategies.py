"""Quantization methods as strategy objects with one interface: `quantize(model, ctx) -> QuantOutcome`.

The pipeline never branches on the method: fp32 is the identity, PTQ calibrates and converts, QAT
calibrates, fine-tunes with fake quantization through the shared training loop, and converts.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.ao import quantization as tq

from diffquant.diffusion.guidance import Guide
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError
from diffquant.quant.bias_correction import correct_bias
from diffquant.quant.calibration import CalibrationData, run_calibration
from diffquant.quant.coverage import edge_layers, uncalled_layers
from diffquant.quant.dynamic import use_dynamic_inputs, use_dynamic_int8_inputs
from diffquant.quant.execution.fast_int8 import speed_up_int8
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.gptq import GPTQSettings, gptq
from diffquant.quant.lowrank import add_low_rank_branches, check_rank
from diffquant.quant.lsq import step_size_param_groups, to_device, use_learned_step_sizes
from diffquant.quant.machine import pinned_threads
from diffquant.quant.mixed_precision import Budget, MixedPlan, choose_bits, measure_layers
from diffquant.quant.placement import on_device
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from diffquant.quant.reconstruction import ReconSettings, reconstruct
from diffquant.quant.rotation import rotate
from diffquant.quant.sensitivity import layer_sensitivity
from diffquant.quant.smoothing import smooth
from diffquant.quant.split import apply_split_shortcut, concat_splits
from diffquant.quant.timestep_scales import (
    ScriptedTimestepInt8,
    clock_of,
    freeze_timestep_tables,
    learn_timestep_tables,
    scale_tables,
    split_by_group,
    use_timestep_inputs,
    use_timestep_int8_inputs,
)
from diffquant.quant.timestep_summary import timestep_summary
from diffquant.quant.transpose import convert_mapping, qat_mapping, transposed_int8_is_exact
from diffquant.quant.wrap import fuse, is_skipped, layer_width, quantizable_types, wrap_layers
from diffquant.training.checkpoint import Checkpointer
from diffquant.training.loop import TrainSettings, distillation_loss, train_diffusion, trajectory_distillation_loss


@dataclass
class QuantContext:
    """What a strategy may use: calibration pairs, training batches, the diffusion process, logging."""

    calibration: Callable[[], CalibrationData]
    train_batches: Callable[[], Iterator[Any]]  # images, or (images, conditions) for a conditional model
    diffusion: GaussianDiffusion
    generator: torch.Generator
    calib_batch_size: int = 64
    log_scalar: Callable[[str, float, int], None] | None = None
    progress: bool = True
    batch_generator: torch.Generator | None = None  # the generator behind `train_batches` (saved in checkpoints)
    state_path: Path | None = None  # QAT: where its resumable checkpoint lives (keyed by `state_key`)
    state_key: str = ""
    checkpoint_every: int = 0
    example: tuple[Tensor, ...] | None = None  # one small (x, t[, cond]) batch for probe forwards (else 2 calibration pairs)
    conditioning: tuple[Guide, float] | None = None  # a conditional model: its guide and the condition dropout (QAT)


@dataclass
class QuantOutcome:
    """The model to evaluate and how it executes: `fp32`, `int8` (real kernels) or `fakequant` (simulated)."""

    model: nn.Module
    execution: str
    wrapped_layers: list[str] = field(default_factory=list)
    fused_groups: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    sensitivity: list[dict[str, object]] = field(default_factory=list)
    recon_loss: dict[str, float] = field(default_factory=dict)
    compile_seconds: float = 0.0  # compiled executions (backend=x86_inductor): compile + first run per shape
    float_layers: dict[str, str] = field(default_factory=dict)  # quantizable layers kept float -> why
    baselines: dict[str, nn.Module] = field(default_factory=dict)  # timed beside it (GPU backends: the bf16 compiled model)
    timestep_scales: dict[str, object] = field(default_factory=dict)  # `quant.act_timestep_groups`: groups, scale spread
    mixed_precision: dict[str, object] = field(default_factory=dict)  # a size budget's chosen widths (`MixedPlan.as_dict`)


@dataclass(frozen=True)
class QuantPlan:
    """Which layers get which qconfig: the base spec, skip patterns, per-layer weight bits, split shortcuts."""

    spec: QuantSpec
    skip: tuple[str, ...] = ()
    layer_bits: tuple[tuple[str, int], ...] = ()
    split_shortcut: bool = False
    dynamic_input: bool = False  # per-call (hence per-timestep) scales for every layer's input
    script: bool = False  # run a converted int8 model as frozen TorchScript graphs (`scripted.ScriptedInt8`)
    keep_float: tuple[str, ...] = ()  # roles kept in float (`coverage.ROLES`: input / output layer), found per model
    kept_float: tuple[str, ...] = ()  # the layer names those roles resolved to (`resolve_plan`)
    uncalled: tuple[str, ...] = ()  # layers the forward never calls as modules (`coverage.uncalled_layers`): float
    simulate: bool = False  # fake quantization even where the plan could run int8 kernels (`quant.simulate`)
    unsupported: tuple[tuple[str, str], ...] = ()  # (layer, why) this engine cannot run in int8 (`resolve_plan`)
    smooth_alpha: float | None = None  # SmoothQuant migration strength (`smoothing.py`); None: off
    rotate: bool = False  # Hadamard rotation of Linear / 1x1-conv inputs (`rotation.py`)
    lowrank_rank: int = 0  # SVDQuant's float low-rank branches (`lowrank.py`); 0: none
    timestep_groups: int = 0  # > 1: one static input scale per group of t (`timestep_scales.py`)
    num_timesteps: int = 1000  # the diffusion's T, which the groups split (set by `resolve_plan`)

    @property
    def float_layers(self) -> tuple[str, ...]:
        """Name patterns of the layers that stay float: `skip` and the resolved `keep_float` roles."""
        return (*self.skip, *self.kept_float, *self.uncalled, *(name for name, _ in self.unsupported))

    def qconfig_for(self, name: str, layer: nn.Module) -> tq.QConfig:
        """The layer's qconfig: its `layer_bits` (first matching pattern) or the base bits; per-tensor weights
        for transposed convolutions (`transpose.WHY_PER_TENSOR`)."""
        bits = layer_width(name, self.layer_bits, self.spec.weight_bits)
        granularity = "per_tensor" if isinstance(layer, nn.ConvTranspose2d) else self.spec.granularity
        return make_qconfig(replace(self.spec, weight_bits=bits, granularity=granularity))

    @property
    def runs_int8(self) -> bool:
        """Real int8 kernels need W8A8 everywhere and one activation scale per tensor (no split), unless simulated."""
        return self.spec.is_int8 and all(b == 8 for _, b in self.layer_bits) and not self.split_shortcut and not self.simulate


def resolve_plan(plan: QuantPlan, model: nn.Module, ctx: QuantContext) -> QuantPlan:
    """The plan with its `keep_float` roles resolved to this model's layer names, and its uncalled layers (probe forwards)."""
    example = ctx.example if ctx.example is not None else ctx.calibration().cycled(2)
    uncalled = tuple(uncalled_layers(model, *example))
    if uncalled:
        logging.getLogger("diffquant").info(
            "Kept in float, never called as modules (their parent reads the weights): %s", ", ".join(uncalled)
        )
    kept = tuple(edge_layers(model, plan.keep_float, *example)) if plan.keep_float else plan.kept_float
    unsupported = plan.unsupported
    if plan.runs_int8:  # transposed convolutions whose int8 kernel fails this machine's self-test stay float
        engine = torch.backends.quantized.engine
        unsupported += tuple(
            (name, f"{engine}'s int8 ConvTranspose2d fails the self-test for kernel {m.kernel_size}, stride {m.stride}")
            for name, m in model.named_modules()
            if isinstance(m, nn.ConvTranspose2d)
            and not transposed_int8_is_exact(engine, m, plan.spec.weight_range(), plan.spec.symmetric)
        )
    for name, why in unsupported:
        logging.getLogger("diffquant").warning("Kept in float: %s (%s)", name, why)
    if plan.lowrank_rank:  # before calibration: a rank no layer allows fails first
        check_rank(model, plan.lowrank_rank, (*plan.skip, *kept, *uncalled, *(n for n, _ in unsupported)))
    if plan.spec.group_size:
        check_groups(model, plan.spec.group_size, (*plan.skip, *kept, *uncalled, *(n for n, _ in unsupported)))
    return replace(
        plan,
        kept_float=kept,
        keep_float=(),
        uncalled=uncalled,
        unsupported=unsupported,
        num_timesteps=ctx.diffusion.num_timesteps,
    )


def check_groups(model: nn.Module, group_size: int, float_patterns: tuple[str, ...]) -> None:
    """Every quantized layer's inputs per output (the GEMM's reduction length) must split into whole groups."""
    for name, module in model.named_modules():
        if isinstance(module, quantizable_types()) and not is_skipped(name, float_patterns):
            n = module.weight[0].numel()
            if n % group_size:
                raise DiffquantError(
                    f"quant.group_size={group_size} does not divide the {n} weights per output of layer {name}; "
                    f"use a group size that divides every quantized layer's, or quant.skip=[{name}]"
                )


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


def float_layer_reasons(model: nn.Module, plan: QuantPlan, wrapped: list[str]) -> dict[str, str]:
    """Each quantizable layer left in float, with why (results.json `float_layers`)."""
    reasons = {
        **{name: "quant.keep_float (input / output role)" for name in plan.kept_float},
        **{name: "never called as a module (its parent reads the weight)" for name in plan.uncalled},
        **dict(plan.unsupported),
    }
    covered: list[str] = []  # as wrap_layers walks: the layers inside a fused or skipped one are its own
    kept: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, quantizable_types()) or any(name.startswith(f"{c}.") for c in covered):
            continue
        covered.append(name)
        if name not in wrapped:
            kept[name] = reasons.get(name, "quant.skip")
    return kept


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


@dataclass
class FP32Strategy:
    """The unquantized reference: returns the model unchanged."""

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        return QuantOutcome(model=model, execution="fp32")


@dataclass
class PTQStrategy:
    """Post-training quantization: fuse, wrap, calibrate on trajectory pairs, reconstruct, convert."""

    plan: QuantPlan
    recon: ReconSettings | None = None
    recon_samples: int = 256
    sensitivity: bool = False
    warmup_batch: int = 64  # the evaluation's sampling batch: a scripted int8 model is traced at it here
    bias_rounds: int = 0  # empirical bias correction passes (`bias_correction.correct_bias`); 0: none
    bias_samples: int = 256  # calibration pairs of that pass (one forward over all of them)
    gptq: GPTQSettings | None = None  # GPTQ weight rounding after calibration (`gptq.py`); None: round to nearest
    mixed: Budget | None = None  # a size budget: per-layer widths chosen before preparation (`mixed_precision.py`)
    device: str = "cpu"  # where everything before conversion runs (`placement.on_device`)

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        start, cpu_ctx = time.perf_counter(), ctx
        resolved = resolve_plan(self.plan, model, ctx)
        float_model, ctx = on_device(model, ctx, self.device)
        plan, mixed = choose_mixed_precision(resolved, float_model, ctx, self.mixed)
        qmodel, wrapped, fused = prepare_fake_quant(float_model, plan, False, ctx.calibration(), ctx.calib_batch_size)
        calibrate(qmodel, ctx)
        if self.gptq is not None:  # on the calibrated weight grids; its time counts in `seconds`
            subset = ctx.calibration().subset(self.gptq.num_samples, seed=0)
            gptq(qmodel, wrapped, subset, self.gptq, ctx.calib_batch_size, ctx.progress)
        recon_loss: dict[str, float] = {}
        if self.recon is not None:
            subset = ctx.calibration().subset(self.recon_samples, seed=0)
            recon_loss = reconstruct(qmodel, float_model, wrapped, subset, self.recon, ctx.progress)
        if self.bias_rounds:
            with pinned_threads(1):  # the same sums in the same order whatever the thread count
                shifts = correct_bias(
                    qmodel,
                    float_model,
                    wrapped,
                    fused,
                    ctx.calibration().subset(self.bias_samples, seed=2),
                    self.bias_rounds,
                    ctx.calib_batch_size,
                )
            logging.getLogger("diffquant").info(
                "Bias correction: mean |shift| per round %s", ", ".join(f"{s:.2e}" for s in shifts)
            )
        report_start, rows = time.perf_counter(), []
        if self.sensitivity:  # on the fake-quant model, before conversion (same numerics as int8, see tests)
            rows = layer_sensitivity(qmodel, float_model, wrapped, fused, ctx.calibration().subset(128, seed=1))
        report_seconds = time.perf_counter() - report_start
        steps = timestep_summary(qmodel.cpu(), wrapped)
        qmodel, execution = finalize(qmodel, plan, wrapped)
        seconds = time.perf_counter() - start - report_seconds
        traced = trace_at(qmodel, cpu_ctx.calibration(), self.warmup_batch)
        extra = {"sensitivity": rows, "recon_loss": recon_loss, "compile_seconds": traced, "timestep_scales": steps}
        extra["mixed_precision"] = mixed.as_dict() if mixed is not None else {}
        return outcome_of(qmodel, execution, model, plan, wrapped, fused, seconds, **extra)


@dataclass
class QATStrategy:
    """Quantization-aware training: calibrated start, fake-quant fine-tuning, observers frozen, convert."""

    plan: QuantPlan
    settings: TrainSettings
    freeze_observer_step: int = 100
    data_weight: float = 1.0  # ‖ε − ε_student‖² on real images
    distill_weight: float = 1.0  # ‖ε_teacher − ε_student‖², the FP32 model as teacher
    data_free: bool = False  # train on the teacher's trajectory pairs only (distillation, no images)
    init_from_ptq: bool = True  # start from ranges calibrated on the trajectory (else from the first batches)
    batch_size: int = 128
    lsq: bool = False  # learned step sizes (LSQ+): implies calibrated initial ranges
    lsq_lr_factor: float = 0.1  # step sizes train at this fraction of the weights' learning rate
    warmup_batch: int = 64  # as PTQStrategy's, where the calibration pairs exist (else traced at first use)
    gptq: GPTQSettings | None = None  # GPTQ-rounded starting weights (after calibration, before fine-tuning)
    mixed: Budget | None = None  # a size budget: widths chosen on the FP32 model before fine-tuning

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        start, cpu_ctx = time.perf_counter(), ctx
        resolved = resolve_plan(self.plan, model, ctx)
        float_model, ctx = on_device(model, ctx, self.settings.device)  # calibration and GPTQ run there too
        plan, mixed = choose_mixed_precision(resolved, float_model, ctx, self.mixed)
        smoothing_data = ctx.calibration() if plan.smooth_alpha is not None else None
        qmodel, wrapped, fused = prepare_fake_quant(float_model, plan, True, smoothing_data, ctx.calib_batch_size)
        if self.init_from_ptq or self.lsq or self.gptq is not None:  # GPTQ rounds onto the calibrated grids
            calibrate(qmodel, ctx)
        if self.gptq is not None:
            subset = ctx.calibration().subset(self.gptq.num_samples, seed=0)
            gptq(qmodel, wrapped, subset, self.gptq, ctx.calib_batch_size, ctx.progress)
        qmodel.apply(tq.enable_observer)  # ranges keep adapting until freeze_observer_step
        groups = None
        if self.lsq:  # the step sizes are learned from here on; observers no longer move them
            use_learned_step_sizes(qmodel)
            learn_timestep_tables(qmodel)  # quant.act_timestep_groups: each group's step size too (TALSQ)
            groups = step_size_param_groups(qmodel, self.settings.lr, self.lsq_lr_factor)
        teacher = copy.deepcopy(model).eval().to(self.settings.device)
        data_gen = ctx.generator
        if self.data_free:
            loss_fn = trajectory_distillation_loss(teacher)
            batches = ctx.calibration().random_batches(self.batch_size, data_gen)
        else:
            loss_fn = distillation_loss(teacher, ctx.diffusion, data_gen, self.data_weight, self.distill_weight, ctx.conditioning)
            batches = ctx.train_batches()
        frozen = [False]

        def freeze(step: int) -> None:  # idempotent: a resumed run may start past the freeze step
            if step >= self.freeze_observer_step and not frozen[0]:
                qmodel.apply(tq.disable_observer)
                frozen[0] = True

        checkpointer = None
        if ctx.state_path is not None:
            gens = {"loss": data_gen, **({"batches": ctx.batch_generator} if ctx.batch_generator is not None else {})}
            checkpointer = Checkpointer(ctx.state_path, ctx.state_key, ctx.checkpoint_every, gens, keep_final=True)
        to_device(qmodel, self.settings.device)  # flags stay on the CPU: no device sync per quantizer and step
        qmodel, _ = train_diffusion(
            qmodel,
            loss_fn,
            batches,
            self.settings,
            log_scalar=ctx.log_scalar,
            on_step=freeze,
            tag="qat",
            progress=ctx.progress,
            checkpointer=checkpointer,
            param_groups=groups,
        )
        freeze_timestep_tables(qmodel)
        steps = timestep_summary(qmodel.cpu(), wrapped)
        qmodel, execution = finalize(qmodel.cpu(), plan, wrapped)
        seconds = time.perf_counter() - start
        calibrated = self.init_from_ptq or self.lsq or self.data_free or self.gptq is not None  # the pairs exist already
        traced = trace_at(qmodel, cpu_ctx.calibration(), self.warmup_batch) if calibrated else 0.0
        extra = {"compile_seconds": traced, "timestep_scales": steps, "mixed_precision": mixed.as_dict() if mixed else {}}
        return outcome_of(qmodel, execution, model, plan, wrapped, fused, seconds, **extra)
