"""Typed schemas of the `quant` and `backend` groups (re-exported by `diffquant.config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from diffquant.components import import_target
from diffquant.errors import DiffquantError, check_choice, check_range
from diffquant.quant.coverage import ROLES
from diffquant.quant.engine import GPU_ENGINES, SCHEME_CHOICES, SCHEMES, Int8Scheme
from diffquant.quant.gpu.convert import WEIGHT_SCALINGS
from diffquant.quant.gpu.formats import INT4_GROUP_SIZES
from diffquant.quant.gpu.runtime import Compiling
from diffquant.quant.qconfig import QuantSpec


@dataclass
class CalibConfig:
    num_samples: int = 64
    timesteps: int = 25
    batch_size: int = 128
    t_sampling: str = "uniform"  # uniform: evenly over the trajectory; normal: PTQ4DM's skewed choice
    t_mean: float = 0.4  # normal: mean of t as a fraction of diffusion.num_timesteps
    t_std: float = 0.4  # normal: std of t as a fraction of diffusion.num_timesteps

    def __post_init__(self) -> None:
        check_range("quant.calib.num_samples", self.num_samples, 1)
        check_range("quant.calib.timesteps", self.timesteps, 1)
        check_choice("quant.calib.t_sampling", self.t_sampling, ("uniform", "normal"))
        check_range("quant.calib.t_std", self.t_std, 1e-6)


@dataclass
class ReconConfig:
    method: str = "none"  # none | adaround (layer by layer) | brecq (block by block)
    iters: int = 300
    lr: float = 1e-2
    num_samples: int = 256  # calibration pairs used for reconstruction
    batch_size: int = 32
    reg_weight: float = 0.01  # AdaRound rounding regularizer weight
    block_types: list[str] = field(default_factory=lambda: ["ResBlock", "AttnBlock"])

    def __post_init__(self) -> None:
        check_choice("quant.recon.method", self.method, ("none", "adaround", "brecq"))
        check_range("quant.recon.iters", self.iters, 1)
        check_range("quant.recon.num_samples", self.num_samples, 1)


@dataclass
class GPTQConfig:
    enabled: bool = False  # GPTQ weight rounding (quant/gptq.py): an alternative to quant.recon
    num_samples: int = 256  # calibration pairs whose layer inputs build each layer's Hessian
    damp: float = 0.01  # added to the Hessian's diagonal, as a fraction of its mean
    block_size: int = 128  # columns per lazy batch update
    act_order: bool = False  # round columns in order of decreasing Hessian diagonal

    def __post_init__(self) -> None:
        check_range("quant.gptq.num_samples", self.num_samples, 1)
        if self.damp <= 0:  # a zero dampening leaves singular Hessians (dead or collinear inputs) unfactorable
            raise DiffquantError(f"quant.gptq.damp={self.damp} is out of range; allowed: > 0")
        check_range("quant.gptq.block_size", self.block_size, 1)


@dataclass
class MixedConfig:
    bits: list[int] = field(default_factory=lambda: [4, 8])  # candidate weight widths per layer under a size budget
    num_samples: int = 128  # calibration pairs on which each layer's error at each width is measured

    def __post_init__(self) -> None:
        if not self.bits:
            raise DiffquantError("quant.mixed.bits=[] is empty; allowed: a list of weight widths in 2..8, e.g. [4, 8]")
        for bits in self.bits:
            check_range("quant.mixed.bits", bits, 2, 8)
        check_range("quant.mixed.num_samples", self.num_samples, 1)


@dataclass
class QATConfig:
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 128
    freeze_observer_step: int = 100
    data_weight: float = 1.0  # ‖ε − ε_student‖² on real images
    distill_weight: float = 1.0  # ‖ε_teacher − ε_student‖² with the FP32 model as teacher
    data_free: bool = False  # train on the teacher's trajectory pairs only (quant.calib.* sets how many)
    init_from_ptq: bool = True  # start from the trajectory-calibrated ranges
    ema_decay: Optional[float] = None  # EMA of the student's weights
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    lsq: bool = False  # learned step sizes (LSQ+) initialised from the calibrated ranges
    lsq_lr_factor: float = 0.1  # step sizes learn at this fraction of quant.qat.lr
    checkpoint_every: int = 100  # steps between resumable checkpoints (the finished state is kept too)

    def __post_init__(self) -> None:
        check_range("quant.qat.steps", self.steps, 1)
        check_range("quant.qat.freeze_observer_step", self.freeze_observer_step, 0)
        check_range("quant.qat.lsq_lr_factor", self.lsq_lr_factor, 0.0)
        check_range("quant.qat.checkpoint_every", self.checkpoint_every, 0)
        check_range("quant.qat.data_weight", self.data_weight, 0.0)
        check_range("quant.qat.distill_weight", self.distill_weight, 0.0)
        check_choice("quant.qat.schedule", self.schedule, ("constant", "cosine"))
        if self.ema_decay is not None:
            check_range("quant.qat.ema_decay", self.ema_decay, 0.0, 1.0)


@dataclass
class QuantConfig:
    _target_: str = "diffquant.quant.methods.fp32"  # the method's factory (quant/methods.py); a user's own by import path
    method: str = "fp32"  # the kind: fp32 | ptq (calibration pairs) | qat (also training batches)
    weight_bits: int = 8
    act_bits: Optional[int] = 8  # null: activations stay float (weight-only quantization)
    granularity: str = "per_channel"
    weight_format: str = "int"  # int | fp8_e4m3 | fp8_e5m2 | mxfp4 | nvfp4: the others are simulated (number_formats.py)
    act_format: str = "int"
    group_size: int = 0  # > 0: integer weights with one scale per group of this many inputs (simulated)
    smooth_alpha: Optional[float] = None  # SmoothQuant: migrate activation outliers into weights with this α (0..1)
    rotate: bool = False  # Hadamard rotation of every Linear / 1x1 conv input (weights rotated, inputs online)
    lowrank_rank: int = 0  # SVDQuant: rank of each layer's float low-rank branch (quant/lowrank.py); 0: off
    symmetric: Optional[bool] = None  # null (auto): symmetric on the full 8-bit weight grid, affine otherwise
    observer: str = "histogram"
    percentile: float = 99.99  # observer=percentile: clip activations at this percentile
    skip: list[str] = field(default_factory=list)
    keep_float: list[str] = field(default_factory=lambda: ["input", "output"])  # roles kept in float: input / output layer
    layer_bits: dict[str, int] = field(default_factory=dict)  # layer-name pattern -> weight bits
    size_budget_bytes: Optional[int] = None  # mixed precision: per-layer widths from quant.mixed.bits within these bytes
    avg_weight_bits: Optional[float] = None  # mixed precision by average weight width instead (one of the two)
    split_shortcut: bool = False  # separate input quantizers for the halves of skip concatenations
    dynamic_input: bool = False  # each layer's input scale from the call's own range (per timestep)
    act_timestep_groups: int = 0  # > 1: static input scales per group of t (equal-width over [0, T); timestep_scales.py)
    sensitivity: bool = True  # write the per-layer SQNR report
    bias_correction: int = 0  # empirical bias correction passes after calibration (PTQ); 0: off
    simulate: bool = False  # keep fake quantization where int8 kernels could run (any scheme's numerics on any CPU)
    save: bool = False  # write the quantized model to quantized.pt in the run folder (diffquant.load reads it)
    load: Optional[str] = None  # a quantized.pt to evaluate instead of quantizing (its recipe replaces this group)
    preset: str = (
        "auto"  # auto: start from the measured-best preset for quant.method at this width (quant/presets.py); none; a name
    )
    calib: CalibConfig = field(default_factory=CalibConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    mixed: MixedConfig = field(default_factory=MixedConfig)

    def __post_init__(self) -> None:
        check_choice("quant.method", self.method, ("fp32", "ptq", "qat"))
        import_target(self._target_, "quant._target_")
        check_range("quant.bias_correction", self.bias_correction, 0, 10)
        check_range("quant.lowrank_rank", self.lowrank_rank, 0)
        if self.smooth_alpha is not None:
            check_range("quant.smooth_alpha", self.smooth_alpha, 0.0, 1.0)
        self.spec(SCHEMES["w8a8"])  # QuantSpec validates bits, granularity and observer
        for role in self.keep_float:
            check_choice("quant.keep_float", role, ROLES)
        for pattern, bits in self.layer_bits.items():
            check_range(f"quant.layer_bits.{pattern}", bits, 2, 8)
        if self.gptq.enabled and self.recon.method != "none":
            raise DiffquantError(
                f"quant.gptq.enabled=true and quant.recon.method={self.recon.method} both choose the weights' rounding; "
                "use one (quant.recon.method=none or quant.gptq.enabled=false)"
            )
        self.check_timestep_groups()
        self.check_budget()

    def check_budget(self) -> None:
        """A mixed-precision budget: one kind, integer weights, and no hand-written `layer_bits` to contradict it."""
        budget, avg = self.size_budget_bytes, self.avg_weight_bits
        if budget is None and avg is None:
            return
        if budget is not None and avg is not None:
            raise DiffquantError(
                f"quant.size_budget_bytes={budget} and quant.avg_weight_bits={avg} are both set; set one of the two"
            )
        given = f"quant.size_budget_bytes={budget}" if budget is not None else f"quant.avg_weight_bits={avg}"
        if budget is not None:
            check_range("quant.size_budget_bytes", budget, 1)
        else:  # below the lowest candidate no plan exists: no model needed to say so
            check_range("quant.avg_weight_bits", avg, min(self.mixed.bits))  # type: ignore[arg-type]
        conflicts = {
            f"quant.layer_bits={self.layer_bits} (the budget chooses every layer's bits)": bool(self.layer_bits),
            f"quant.weight_format={self.weight_format} (widths apply to integer weights)": self.weight_format != "int",
            f"quant.method={self.method} (no layer is quantized)": self.method == "fp32",
        }
        conflict = next((why for why, on in conflicts.items() if on), None)
        if conflict:
            raise DiffquantError(f"{given} cannot combine with {conflict}; drop one of them")

    def check_timestep_groups(self) -> None:
        """`act_timestep_groups`: at most one group per calibration timestep, and only with what keeps a static table."""
        groups = self.act_timestep_groups
        check_range("quant.act_timestep_groups", groups, 0)
        if groups > self.calib.timesteps:
            raise DiffquantError(
                f"quant.act_timestep_groups={groups} exceeds quant.calib.timesteps={self.calib.timesteps}: every group needs "
                f"calibration timesteps of its own; allowed: 0..{self.calib.timesteps}"
            )
        if groups <= 1:
            return
        conflicts = {
            "quant.dynamic_input=true (per-call scales replace the table)": self.dynamic_input,
            "quant.act_bits=null (no input quantizer)": self.act_bits is None,
            f"quant.act_format={self.act_format} (integer grids only)": self.act_format != "int",
            "quant.split_shortcut=true (its split quantizers have no table)": self.split_shortcut,
            f"quant.recon.method={self.recon.method} (it runs layers without their t)": self.recon.method != "none",
        }
        given = [why for why, on in conflicts.items() if on]
        if given:
            raise DiffquantError(f"quant.act_timestep_groups={groups} cannot combine with {given[0]}; set it to 0 or drop that")

    def weight_symmetric(self, scheme: Int8Scheme) -> bool:
        """`quant.symmetric`, with null resolved: symmetric weights on the full 8-bit grid [-128, 127], affine otherwise.

        Measured, not derived (docs/quantization.md): on that grid symmetric weights gave the smaller paired
        fid_cls delta on digits and MNIST, on the 7-bit (w7a8) grid affine weights did; below 8 bits affine
        stays as it was (not re-measured).
        """
        if self.symmetric is not None:
            return self.symmetric
        return self.weight_bits == 8 and not scheme.reduce_weight_range

    def spec(self, scheme: Int8Scheme) -> QuantSpec:
        """The qconfig-level description of this group, with the 8-bit grids of the backend's int8 scheme."""
        return QuantSpec(
            weight_bits=self.weight_bits,
            act_bits=self.act_bits,
            granularity=self.granularity,
            weight_format=self.weight_format,
            act_format=self.act_format,
            group_size=self.group_size,
            symmetric=self.weight_symmetric(scheme),
            observer=self.observer,
            percentile=self.percentile,
            reduce_range=scheme.reduce_range,
            reduce_weight_range=scheme.reduce_weight_range,
        )


GPU_FIELDS = (
    "weight_scaling",
    "group_size",
    "compile",
    "compile_mode",
    "compile_scope",
    "sigmoid_gelu",
)  # read by the GPU backends only (quant/gpu)


@dataclass
class BackendConfig:
    engine: str = "fbgemm"
    int8_scheme: str = "auto"  # auto | w8a8 | w7a8 | w8a7: 8-bit grids; auto: the first exact on this CPU (engine.py)
    torchscript: bool = True  # run eager int8 models as frozen TorchScript graphs (bit-identical, faster)
    weight_scaling: str = "tensorwise"  # cuda_fp8: one weight scale per tensor | rowwise (per output row)
    group_size: int = 128  # cuda_int4wo: input channels per weight scale (32, 64, 128, 256)
    compile: bool = True  # GPU backends: torch.compile the bf16 model with its low-bit layers
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    compile_scope: str = "model"  # model (one graph) | blocks (each repeated block, compiled once and reused)
    sigmoid_gelu: bool = True  # compiled GPU models: tanh-form GELU as x·sigmoid(2u), the same function, faster (gpu/gelu.py)

    def __post_init__(self) -> None:
        check_choice("backend.engine", self.engine, ("fbgemm", "qnnpack", "x86", "x86_inductor", *GPU_ENGINES))
        check_choice("backend.int8_scheme", self.int8_scheme, SCHEME_CHOICES)
        check_choice("backend.weight_scaling", self.weight_scaling, WEIGHT_SCALINGS)
        check_choice("backend.group_size", self.group_size, INT4_GROUP_SIZES)
        self.compiling()  # validates compile_mode and compile_scope

    def compiling(self) -> Compiling:
        """How a GPU backend compiles its model."""
        return Compiling(self.compile, self.compile_mode, self.compile_scope, self.sigmoid_gelu)

    def key(self) -> dict[str, object]:
        """What a cached result depends on: every field, without the GPU-only ones for a CPU engine."""
        fields = asdict(self)
        if self.engine not in GPU_ENGINES:
            for name in GPU_FIELDS:
                fields.pop(name)
        return fields
