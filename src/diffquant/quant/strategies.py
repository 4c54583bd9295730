"""Quantization methods as strategy objects with one interface: `quantize(model, ctx) -> QuantOutcome`.

The pipeline never branches on the method: fp32 is the identity, PTQ calibrates and converts, QAT
calibrates, fine-tunes with fake quantization through the shared training loop, and converts.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

from torch import nn
from torch.ao import quantization as tq

from diffquant.quant.bias_correction import correct_bias
from diffquant.quant.gptq import GPTQSettings, gptq
from diffquant.quant.lsq import step_size_param_groups, to_device, use_learned_step_sizes
from diffquant.quant.machine import pinned_threads
from diffquant.quant.mixed_precision import Budget
from diffquant.quant.placement import on_device
from diffquant.quant.plan import QuantContext, QuantOutcome, QuantPlan, resolve_plan
from diffquant.quant.preparation import calibrate, choose_mixed_precision, finalize, outcome_of, prepare_fake_quant, trace_at
from diffquant.quant.reconstruction import ReconSettings, reconstruct
from diffquant.quant.sensitivity import layer_sensitivity
from diffquant.quant.timestep_scales import (
    freeze_timestep_tables,
    learn_timestep_tables,
)
from diffquant.quant.timestep_summary import timestep_summary
from diffquant.training.checkpoint import Checkpointer
from diffquant.training.loop import TrainSettings, distillation_loss, train_diffusion, trajectory_distillation_loss

# the types also stay importable from here, where methods written before `plan.py` existed import them
__all__ = ["FP32Strategy", "PTQStrategy", "QATStrategy", "QuantContext", "QuantOutcome", "QuantPlan"]


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
