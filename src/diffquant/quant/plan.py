"""What a quantization method works from and returns: its context, its plan of which layers get which
qconfig (resolved per model), and its outcome."""

from __future__ import annotations

import logging
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
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.coverage import edge_layers, uncalled_layers
from diffquant.quant.lowrank import check_rank
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from diffquant.quant.transpose import transposed_int8_is_exact
from diffquant.quant.wrap import is_skipped, layer_width, quantizable_types


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
