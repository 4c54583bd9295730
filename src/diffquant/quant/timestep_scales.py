"""Per-timestep-group input scales (`quant.act_timestep_groups`): static scales, one table row per group of t.

A diffusion model's layer inputs change range along the trajectory (TDQ, TFMQ-DM, EfficientDM's
TALSQ): one static scale fitted to every t is too coarse at small t. Here t in [0, T) splits into
N equal-width groups, group = floor(t N / T) (the sampler's steps fall evenly into them for DDIM
and DDPM alike, and a group means the same t range whatever the sampler or its step count). Each
wrapped layer's input quantizer keeps one observer and one (scale, zero point) per group, each
calibrated on that group's pairs only; a call uses the row of its t.

The "current t" is per model: `StepClock`, a forward pre-hook on the model, reads the t argument
of each call and every quantizer of that model holds a reference to it. Fake quantization handles
batches that mix groups (one scale per row); the int8 kernels take one scale per tensor, so a mixed
batch runs each group's rows separately (eager only). The choice is traceable: the table is indexed
by a group index computed from t in tensor ops, so TorchScript graphs serve every t.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.execution.fast_int8 import Int8Wrapper, conv_at, linear_at
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.observers import RefreshedOnUse

LEARNED_SCALE_MIN = 1e-8  # a learned step size is kept above this (as LSQ's eps)


class StepClock:
    """A model's forward pre-hook: the timestep group of each row of the call's t (`rows`), and whether they agree."""

    def __init__(self, groups: int, num_timesteps: int) -> None:
        self.groups, self.num_timesteps = groups, num_timesteps
        self.rows: Tensor | None = None
        self.uniform = True

    def group_of(self, t: Tensor) -> Tensor:
        """floor(t * groups / num_timesteps), clamped to the groups: tensor ops only (traced, not frozen)."""
        t = torch.as_tensor(t).reshape(-1).long()
        return torch.div(t * self.groups, self.num_timesteps, rounding_mode="floor").clamp(0, self.groups - 1)

    def bounds(self, group: int) -> tuple[int, int]:
        """The t range [low, high) of a group."""
        lo = -(-group * self.num_timesteps // self.groups)  # the smallest t with floor(t N / T) = group
        return lo, -(-(group + 1) * self.num_timesteps // self.groups)

    def set(self, t: Tensor) -> None:
        """Record the groups of t (also for direct layer calls, e.g. the sensitivity report's)."""
        self.rows = self.group_of(t)
        self.uniform = torch.jit.is_tracing() or bool((self.rows == self.rows[0]).all())

    def __call__(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if len(args) < 2:
            raise DiffquantError("quant.act_timestep_groups needs the model called as model(x_t, t[, cond]) with t positional")
        self.set(args[1])

    def current(self, batch: int) -> Tensor:
        """The row groups of the current call, checked against the quantized tensor's batch size."""
        if self.rows is None or (self.rows.numel() != batch and not torch.jit.is_tracing()):
            got = "no t yet" if self.rows is None else f"t of {self.rows.numel()} rows"
            raise DiffquantError(f"quant.act_timestep_groups: a layer input of batch {batch} met {got}; call the whole model")
        return self.rows


def clock_of(model: nn.Module) -> StepClock | None:
    """The model's StepClock, if it has per-timestep scales."""
    return next((h for h in model._forward_pre_hooks.values() if isinstance(h, StepClock)), None)


class TimestepFakeQuantize(RefreshedOnUse):
    """One observer and one (scale, zero point) per timestep group; each row is fake-quantized with its group's."""

    def __init__(self, observer: nn.Module, quant_min: int, quant_max: int, clock: StepClock) -> None:
        super().__init__()
        self.quant_min, self.quant_max, self.clock = quant_min, quant_max, clock
        self.observers = nn.ModuleList(copy.deepcopy(observer) for _ in range(clock.groups))
        self.register_buffer("scale", torch.ones(clock.groups))
        self.register_buffer("zero_point", torch.zeros(clock.groups, dtype=torch.int32))
        self.dtype, self.qscheme = torch.quint8, torch.per_tensor_affine  # what convert reads
        self.stale: set[int] = set()  # groups observed since their row was last derived

    def refresh(self) -> None:
        """Derive the rows of the groups observed since the last refresh from their observers."""
        for g in sorted(self.stale):
            scale, zero_point = self.observers[g].calculate_qparams()
            self.scale[g], self.zero_point[g] = scale.reshape(()), zero_point.reshape(())
        self.stale.clear()

    @property
    def learning(self) -> bool:
        """Whether the table is being learned (`learn`): scale and zero point are parameters."""
        return isinstance(self.scale, nn.Parameter)

    def learn(self) -> None:
        """LSQ+ per group (EfficientDM's TALSQ): the calibrated rows become trainable parameters, observers stop."""
        self.refresh()
        scale, zero_point = self.scale.detach().clone(), self.zero_point.detach().float().clone()
        del self._buffers["scale"], self._buffers["zero_point"]
        self.scale, self.zero_point = nn.Parameter(scale), nn.Parameter(zero_point)
        self.disable_observer()

    def freeze(self) -> None:
        """Back to a fixed table (after training): scales floored above 0, zero points rounded onto the grid."""
        if not self.learning:
            return
        scale, zero_point = self.table()
        del self._parameters["scale"], self._parameters["zero_point"]
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def table(self) -> tuple[Tensor, Tensor]:
        """(scale [N] float, zero point [N] int32) as the int8 kernels take them, learned or observed."""
        self.refresh()
        scale = self.scale.detach().clamp(min=LEARNED_SCALE_MIN).clone()
        zero_point = self.zero_point.detach().round().clamp(self.quant_min, self.quant_max).to(torch.int32)
        return scale, zero_point

    def forward(self, x: Tensor) -> Tensor:
        rows = self.clock.current(x.shape[0])
        if self.learning:  # every row with its group's step size; gradients flow back into each used row
            if not bool(self.fake_quant_enabled[0]):
                return x
            scale = self.scale.clamp(min=LEARNED_SCALE_MIN)[rows]
            grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5  # LSQ's gradient scale, as _LearnableFakeQuantize's
            return torch._fake_quantize_learnable_per_channel_affine(
                x, scale, self.zero_point[rows], 0, self.quant_min, self.quant_max, grad_factor
            )
        if bool(self.observer_enabled[0]):
            present = [int(rows[0])] if self.clock.uniform else rows.unique().tolist()
            for g in present:  # a uniform batch is observed whole: the same batches as one group's own calibration
                self.observers[g](x.detach() if self.clock.uniform else x.detach()[rows == g])
            self.stale.update(present)  # (scale, zero point) are derived when used: see DeferredFakeQuantize
        if not bool(self.fake_quant_enabled[0]):
            return x
        self.refresh()
        if self.clock.uniform:  # as FakeQuantize does, with the group's row: bit for bit the int8 path's grid
            g = rows[:1]
            return torch.fake_quantize_per_tensor_affine(x, self.scale[g], self.zero_point[g], self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(
            x, self.scale[rows], self.zero_point[rows], 0, self.quant_min, self.quant_max
        )

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # convert asks; TimestepQuantize replaces its answer
        scale, zero_point = self.table()
        return scale[:1], zero_point[:1]


class TimestepQuantize(nn.Module):
    """int8 counterpart: quantize_per_tensor with the table row of the call's group (replaces a converted Quantize)."""

    def __init__(self, scale: Tensor, zero_point: Tensor, clock: StepClock) -> None:
        super().__init__()
        self.clock = clock
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zero_point", zero_point.detach().clone().long())

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        g = self.clock.current(x.shape[0])[:1] if group is None else group  # TimestepInt8Wrapper splits mixed batches
        return torch.quantize_per_tensor(x, self.scale[g], self.zero_point[g], torch.quint8)


class TimestepInt8Wrapper(Int8Wrapper):
    """quantize -> int8 layer -> dequantize with the input and output scales of the call's group; a batch that
    mixes groups runs each group's rows separately (eagerly)."""

    def forward(self, X: Tensor) -> Tensor:
        rows = self.quant.clock.current(X.shape[0])
        if self.quant.clock.uniform:
            return self.run(X, rows[:1])
        out: Tensor | None = None
        for g in rows.unique():
            idx = (rows == g).nonzero().squeeze(1)
            part = self.run(X[idx], g.reshape(1))
            out = part.new_empty((X.shape[0], *part.shape[1:])) if out is None else out
            out.index_copy_(0, idx, part)
        assert out is not None
        return out

    def run(self, x: Tensor, g: Tensor) -> Tensor:
        q, m = self.quant(x, g), self.module
        scale, zp = self.out_scale[g], self.out_zero_point[g]
        script = torch.jit.script if torch.jit.is_tracing() else (lambda fn: fn)
        if isinstance(m, nnq.Linear):
            return script(linear_at)(q, m._packed_params._packed_params, scale, zp, isinstance(m, nniq.LinearReLU)).dequantize()
        kind = 1 if isinstance(m, nniq.ConvReLU2d) else 2 if isinstance(m, nnq.ConvTranspose2d) else 0
        return script(conv_at)(q, m._packed_params, scale, zp, kind).dequantize()


class ScriptedTimestepInt8(ScriptedInt8):
    """ScriptedInt8 traced at one t per batch (the graph indexes the table by t); mixed-group batches run eagerly."""

    def __init__(self, eager: nn.Module, clock: StepClock) -> None:
        super().__init__(eager)
        self.clock = clock

    def graph_for(self, *args: Tensor) -> torch.jit.ScriptModule | None:
        x, t, *rest = args
        return super().graph_for(x, t[:1].expand(t.shape).clone(), *rest)

    def forward(self, *args: Tensor) -> Tensor:
        rows = self.clock.group_of(args[1])
        if not bool((rows == rows[0]).all()):
            return self.eager(*args)
        return super().forward(*args)


def use_timestep_inputs(qmodel: nn.Module, wrapped: list[str], groups: int, num_timesteps: int) -> StepClock:
    """Before calibration: each wrapped layer's input and output FakeQuantize become per-group tables of the same
    observers (the int8 kernels requantize their output: one static output scale would undo the input's gain)."""
    clock = StepClock(groups, num_timesteps)
    qmodel.register_forward_pre_hook(clock)
    for name in wrapped:
        wrapper = qmodel.get_submodule(name)
        for owner in (wrapper.quant, wrapper.module):
            fq = owner.activation_post_process
            owner.activation_post_process = TimestepFakeQuantize(fq.activation_post_process, fq.quant_min, fq.quant_max, clock)
    return clock


def use_timestep_int8_inputs(qmodel: nn.Module, wrapped: list[str], tables: dict[str, Tables]) -> None:
    """After conversion (and `speed_up_int8`): each wrapped layer quantizes its input and output with its group's rows."""
    clock = clock_of(qmodel)
    assert clock is not None
    for name in wrapped:
        wrapper = qmodel.get_submodule(name)
        (in_scale, in_zp), (out_scale, out_zp) = tables[name]
        wrapper.quant = TimestepQuantize(in_scale, in_zp, clock)
        wrapper.register_buffer("out_scale", out_scale.float())
        wrapper.register_buffer("out_zero_point", out_zp.long())
        wrapper.__class__ = TimestepInt8Wrapper


Tables = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]  # ((input scale, zero point), (output ...)), [N] each


def scale_tables(qmodel: nn.Module, wrapped: list[str]) -> dict[str, Tables]:
    """Each wrapped layer's input and output (scale [N], zero point [N]) tables, from its fake quantizers or int8 modules."""

    def table_of(quantizer: nn.Module) -> tuple[Tensor, Tensor]:
        if isinstance(quantizer, TimestepFakeQuantize):
            return quantizer.table()
        return quantizer.scale.detach().clone(), quantizer.zero_point.detach().clone()

    tables = {}
    for name in wrapped:
        wrapper = qmodel.get_submodule(name)
        inp = table_of(getattr(wrapper.quant, "activation_post_process", wrapper.quant))
        if isinstance(wrapper, TimestepInt8Wrapper):
            out = (wrapper.out_scale.detach().clone(), wrapper.out_zero_point.detach().clone())
        else:
            out = table_of(wrapper.module.activation_post_process)
        tables[name] = (inp, out)
    return tables


def split_by_group(data: CalibrationData, clock: StepClock) -> list[CalibrationData]:
    """The calibration pairs of each group, in their order; refused (one line) where a group gets none."""
    rows = clock.group_of(data.t)
    parts = []
    for g in range(clock.groups):
        idx = (rows == g).nonzero().squeeze(1)
        if not len(idx):
            lo, hi = clock.bounds(g)
            seen = sorted(set(data.t.tolist()))
            raise DiffquantError(
                f"quant.act_timestep_groups={clock.groups}: group {g} (t in [{lo}, {hi})) gets no calibration pairs "
                f"(the pairs' {len(seen)} timesteps: {seen[:8]}{'...' if len(seen) > 8 else ''}); "
                "raise quant.calib.timesteps or lower quant.act_timestep_groups"
            )
        parts.append(CalibrationData(*data.rows(idx), guidance_scale=data.guidance_scale))
    return parts


def learn_timestep_tables(qmodel: nn.Module) -> int:
    """QAT with learned step sizes: every per-timestep table becomes trainable (`TimestepFakeQuantize.learn`); how many."""
    tables = [m for m in qmodel.modules() if isinstance(m, TimestepFakeQuantize)]
    for table in tables:
        table.learn()
    return len(tables)


def freeze_timestep_tables(qmodel: nn.Module) -> None:
    """After QAT: learned tables become fixed buffers again, zero points rounded (what convert and saving read)."""
    for module in qmodel.modules():
        if isinstance(module, TimestepFakeQuantize):
            module.freeze()
