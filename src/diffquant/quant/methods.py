"""Quantization methods chosen by `quant._target_`: each is a factory `(MethodInputs) -> strategy`.

The `quant` group files name one of the factories below (`conf/quant/ptq.yaml`: `diffquant.quant.methods.ptq`;
the specialization `conf/quant_backend/ptq_x86_inductor.yaml` swaps in `ptq_pt2e`). A user's own method
is a function of the same signature returning an object with `quantize(model, ctx) -> QuantOutcome`;
`quant.method` (fp32 / ptq / qat) stays the kind of method, which says what the pipeline prepares for it
(calibration pairs, training batches) and how results are labelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

from diffquant.errors import DiffquantError
from diffquant.quant.config import QuantConfig
from diffquant.quant.engine import GPU_ENGINES, Int8Numerics, require_exact
from diffquant.quant.gptq import GPTQSettings
from diffquant.quant.gpu.convert import LowBitSpec
from diffquant.quant.gpu.runtime import Compiling, require_gpu
from diffquant.quant.gpu.strategy import GpuPTQStrategy
from diffquant.quant.mixed_precision import Budget
from diffquant.quant.plan import QuantContext, QuantOutcome, QuantPlan
from diffquant.quant.pt2e import InductorPTQStrategy
from diffquant.quant.reconstruction import ReconSettings
from diffquant.quant.strategies import FP32Strategy, PTQStrategy, QATStrategy
from diffquant.training.loop import TrainSettings


class Strategy(Protocol):
    """What a method factory returns."""

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome: ...


@dataclass(frozen=True)
class MethodInputs:
    """What every method factory gets: the `quant` group, the engine and its int8 numerics, run-level values."""

    quant: QuantConfig
    engine: str
    int8_scheme: str  # `backend.int8_scheme` as given (auto / w8a8 / ...), for the saturation check's message
    numerics: Int8Numerics
    torchscript: bool = True
    warmup: int = 64  # the evaluation's sampling batch: compiled / scripted models get ready at it
    device: str = "cpu"
    log_every: int = 50
    weight_scaling: str = "tensorwise"  # GPU backends (`backend.*`): fp8 weight scales, int4 group size, compiling
    group_size: int = 128
    compiling: Compiling = Compiling()

    def plan(self) -> QuantPlan:
        """Which layers get which qconfig, on the 8-bit grids of the engine's int8 scheme."""
        q = self.quant
        return QuantPlan(
            q.spec(self.numerics.scheme),
            tuple(q.skip),
            tuple(q.layer_bits.items()),
            q.split_shortcut,
            q.dynamic_input,
            script=self.torchscript,
            keep_float=tuple(q.keep_float),
            simulate=q.simulate,
            smooth_alpha=q.smooth_alpha,
            rotate=q.rotate,
            lowrank_rank=q.lowrank_rank,
            timestep_groups=q.act_timestep_groups,
        )

    def budget(self) -> Budget | None:
        """`quant.size_budget_bytes` / `quant.avg_weight_bits` with the candidate widths; None without a budget."""
        q = self.quant
        if q.size_budget_bytes is None and q.avg_weight_bits is None:
            return None
        return Budget(q.size_budget_bytes, q.avg_weight_bits, tuple(sorted(set(q.mixed.bits))), q.mixed.num_samples)

    def require_eager_engine(self) -> None:
        """Eager torch.ao methods cannot run on x86_inductor or a GPU backend (their specializations pick `ptq_pt2e` / `ptq_gpu`)."""
        if self.engine == "x86_inductor" or self.engine in GPU_ENGINES:
            raise DiffquantError(f"backend={self.engine} supports quant=ptq only; got quant={self.quant.method}")

    def require_integer_grids(self, *uses: tuple[str, bool], weights_only: bool = False) -> None:
        """Rounding learned on an integer grid (AdaRound, BRECQ, LSQ) needs integer weights per channel / tensor;
        `weights_only` (GPTQ, which rounds weights alone and computes group scales itself): integer weights, groups too."""
        spec = self.quant.spec(self.numerics.scheme)
        used = [name for name, on in uses if on]
        q = self.quant
        if weights_only and used and q.weight_format != "int":
            raise DiffquantError(
                f"{used[0]} rounds onto integer weight grids; got quant.weight_format={q.weight_format} "
                "(use quant.weight_format=int, per channel, per tensor or with quant.group_size)"
            )
        if spec.simulated_formats and used and not weights_only:
            raise DiffquantError(
                f"{used[0]} learns on integer grids per channel or tensor; got quant.weight_format={q.weight_format} "
                f"quant.act_format={q.act_format} quant.group_size={q.group_size} (use int formats and group_size=0)"
            )

    def gptq(self, freeze_groups: bool = True) -> GPTQSettings | None:
        """`quant.gptq` as the strategies take it; None when off."""
        g = self.quant.gptq
        return GPTQSettings(g.num_samples, g.damp, g.block_size, g.act_order, freeze_groups) if g.enabled else None

    def require_exact_int8(self, plan: QuantPlan) -> None:
        """Refuse int8 kernels whose accumulation saturates on this CPU (simulated runs are exempt)."""
        if plan.runs_int8:
            require_exact(self.numerics, self.int8_scheme)


def fp32(inputs: MethodInputs) -> FP32Strategy:
    """No quantization: the FP32 model itself is evaluated."""
    return FP32Strategy()


def ptq(inputs: MethodInputs) -> PTQStrategy:
    """Eager torch.ao post-training quantization: calibrate, reconstruct (optional), bias-correct, convert."""
    inputs.require_eager_engine()
    q, r, plan = inputs.quant, inputs.quant.recon, inputs.plan()
    inputs.require_integer_grids((f"quant.recon.method={r.method}", r.method != "none"))
    inputs.require_integer_grids(("quant.gptq.enabled=true", q.gptq.enabled), weights_only=True)
    inputs.require_exact_int8(plan)
    recon = (
        None if r.method == "none" else ReconSettings(r.method, r.iters, r.lr, r.batch_size, r.reg_weight, tuple(r.block_types))
    )
    return PTQStrategy(
        plan,
        recon,
        r.num_samples,
        q.sensitivity,
        inputs.warmup,
        bias_rounds=q.bias_correction,
        gptq=inputs.gptq(),
        mixed=inputs.budget(),
        device=inputs.device,
    )


def ptq_pt2e(inputs: MethodInputs) -> InductorPTQStrategy:
    """torchao's PT2E post-training quantization compiled by Inductor (backend=x86_inductor only)."""
    q = inputs.quant
    if inputs.engine != "x86_inductor":
        raise DiffquantError(
            f"quant._target_=diffquant.quant.methods.ptq_pt2e needs backend=x86_inductor; got backend={inputs.engine}"
        )
    if q.gptq.enabled:
        raise DiffquantError("backend=x86_inductor does not support quant.gptq.enabled=true; use backend=fbgemm or x86")
    if q.simulate:
        raise DiffquantError(
            "quant.simulate=true needs an eager engine (backend=fbgemm, x86 or qnnpack): x86_inductor compiles int8"
        )
    if q.act_timestep_groups > 1:
        raise DiffquantError(
            "quant.act_timestep_groups needs an eager engine (backend=fbgemm, x86 or qnnpack): x86_inductor has one scale per input"
        )
    if inputs.budget() is not None:
        raise DiffquantError(
            "quant.size_budget_bytes / quant.avg_weight_bits need an eager engine (backend=fbgemm, x86 or qnnpack): "
            "x86_inductor runs 8-bit weights only"
        )
    require_exact(inputs.numerics, inputs.int8_scheme)
    return InductorPTQStrategy(inputs.plan(), q.recon.method, inputs.warmup)


def ptq_gpu(inputs: MethodInputs) -> GpuPTQStrategy:
    """Post-training quantization to a GPU low-bit format (backend=cuda_fp8, cuda_int8, cuda_int4wo), run compiled in bf16."""
    q, engine = inputs.quant, inputs.engine
    if engine not in GPU_ENGINES:
        raise DiffquantError(
            f"quant._target_=diffquant.quant.methods.ptq_gpu needs a GPU backend ({', '.join(GPU_ENGINES)}); got backend={engine}"
        )
    fmt = GPU_ENGINES[engine]
    bits = (4, None) if fmt == "int4wo" else (8, 8)
    if (q.weight_bits, q.act_bits) != bits:
        wanted = (
            "quant.weight_bits=4 quant.act_bits=null (weight-only)" if fmt == "int4wo" else "quant.weight_bits=8 quant.act_bits=8"
        )
        raise DiffquantError(
            f"backend={engine} runs {fmt} with {wanted}; got quant.weight_bits={q.weight_bits} "
            f"quant.act_bits={'null' if q.act_bits is None else q.act_bits}"
        )
    given = [
        k
        for k, v in (
            ("quant.recon.method", q.recon.method != "none"),
            ("quant.gptq.enabled", q.gptq.enabled),
            ("quant.layer_bits", bool(q.layer_bits)),
            ("quant.size_budget_bytes", q.size_budget_bytes is not None),
            ("quant.avg_weight_bits", q.avg_weight_bits is not None),
            ("quant.split_shortcut", q.split_shortcut),
            ("quant.dynamic_input", q.dynamic_input),
            ("quant.bias_correction", q.bias_correction > 0),
            ("quant.simulate", q.simulate),
            ("quant.smooth_alpha", q.smooth_alpha is not None),
            ("quant.rotate", q.rotate),
            ("quant.lowrank_rank", q.lowrank_rank > 0),
            ("quant.act_timestep_groups", q.act_timestep_groups > 1),
        )
        if v
    ]
    if given:
        raise DiffquantError(f"backend={engine} does not support {', '.join(given)}; use backend=fbgemm or x86 for those")
    require_gpu(engine, inputs.device)  # before any training: no CUDA, or fp8 on a GPU older than 8.9
    spec = LowBitSpec(fmt, inputs.weight_scaling, inputs.group_size)
    return GpuPTQStrategy(spec, engine, inputs.device, tuple(q.skip), tuple(q.keep_float), inputs.compiling, inputs.warmup)


def qat(inputs: MethodInputs) -> QATStrategy:
    """Quantization-aware training with fake quantization through the shared training loop, then convert."""
    inputs.require_eager_engine()
    t, plan = inputs.quant.qat, inputs.plan()
    inputs.require_integer_grids(("quant.qat.lsq=true", t.lsq))
    inputs.require_integer_grids(("quant.gptq.enabled=true", inputs.quant.gptq.enabled), weights_only=True)
    inputs.require_exact_int8(plan)
    settings = TrainSettings(
        steps=t.steps,
        lr=t.lr,
        warmup_steps=t.warmup_steps,
        ema_decay=t.ema_decay,
        log_every=inputs.log_every,
        schedule=t.schedule,
        device=inputs.device,
    )
    return QATStrategy(
        plan,
        settings,
        t.freeze_observer_step,
        t.data_weight,
        t.distill_weight,
        t.data_free,
        t.init_from_ptq,
        t.batch_size,
        t.lsq,
        t.lsq_lr_factor,
        inputs.warmup,
        gptq=inputs.gptq(freeze_groups=False),  # training moves the weights: group scales follow them
        mixed=inputs.budget(),  # widths chosen on the FP32 weights, before fine-tuning
    )
