"""backend=x86_inductor: torchao's PT2E flow on our calibration pairs, compiled by Inductor with freezing.

torch.export (linears that read one tensor merged) -> prepare_pt2e(X86InductorQuantizer) -> the
FP32 trajectory's (x_t, t) pairs -> convert_pt2e -> GroupNorm rewritten to per-channel statistics,
SiLUs that feed a quantize without exp -> `compiling.AotCompiled` (AOTInductor per input shape,
freezing set globally: as a compile option alone Inductor cannot lower `onednn.qconv_prepack`).
Inductor turns every quantize -> conv -> dequantize into one oneDNN int8 kernel and fuses
GroupNorm, SiLU and the input quantization into C++ loops around it: no eager dispatch between layers.

Limits: W8A8 only, per-channel symmetric weights (what oneDNN runs), static activation scales
(calibrated, not per call), static shapes (one compile per batch size; Inductor's dynamic-shape
lowering of the int8 conv fails here). Needs the optional extra `inductor` (torchao).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.execution.agreement import check_against_fp32
from diffquant.quant.execution.compiling import AotCompiled, export_merged, rewrite_group_norms, rewrite_quantized_silus
from diffquant.quant.machine import pinned_threads
from diffquant.quant.plan import QuantContext, QuantOutcome, QuantPlan, float_layer_reasons, resolve_plan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.wrap import is_skipped, quantizable_types

EXECUTION = "int8_inductor"
OBSERVERS = ("minmax", "moving_average", "histogram")


def require_torchao() -> None:
    """One line naming the backend and the extra when torchao is missing."""
    if importlib.util.find_spec("torchao") is None:
        raise DiffquantError("backend=x86_inductor needs torchao: pip install -e '.[inductor]'")


def make_quantizer(spec: QuantSpec, skip: list[str]) -> object:
    """X86InductorQuantizer with the default int8 recipe, our activation observer and the spec's 8-bit grids; `skip` float."""
    from torchao.quantization.pt2e import observer as obs
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=spec.reduce_range)
    observer = {
        "minmax": obs.MinMaxObserver,
        "moving_average": obs.MovingAverageMinMaxObserver,
        "histogram": obs.HistogramObserver,
    }[spec.observer].with_args(eps=2**-12)
    act = replace(config.input_activation, observer_or_fake_quant_ctr=observer)
    wmin, wmax = spec.weight_range()  # [-64, 63] where this CPU's int8 kernels would saturate 8-bit weights
    weight = replace(config.weight, quant_min=wmin, quant_max=wmax)
    quantizer = xiq.X86InductorQuantizer().set_global(replace(config, input_activation=act, output_activation=act, weight=weight))
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def drop_unused_attributes(graph: torch.fx.GraphModule) -> None:
    """convert_pt2e keeps the float weights next to the int8 ones it uses: drop what no node reads."""
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in [*graph.named_parameters(), *graph.named_buffers()] if n not in used]:
        owner, _, attr = name.rpartition(".")
        delattr(graph.get_submodule(owner) if owner else graph, attr)


@torch.no_grad()
def quantize_pt2e(
    model: nn.Module, data: CalibrationData, batch_size: int, spec: QuantSpec, skip: list[str]
) -> torch.fx.GraphModule:
    """Export with a dynamic batch, observe the calibration pairs, convert to a quantized graph (not compiled)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = export_merged(copy.deepcopy(model).eval(), data.cycled(2))
    prepared = prepare_pt2e(exported, make_quantizer(spec, skip))
    with pinned_threads(1):  # ranges identical whatever the thread count (see machine.pinned_threads)
        for batch in data.batches(batch_size):
            prepared(*batch)
    graph = convert_pt2e(prepared)
    drop_unused_attributes(graph)
    return graph


class CompiledInt8(nn.Module):
    """The quantized graph (its int8 weights are the state_dict) and its AOTInductor-compiled libraries.

    `example` (one input batch) lets `save` export the graph with a dynamic batch; `rewritten=True`
    takes a graph whose GroupNorms and SiLUs were rewritten already (one `load` read back).
    """

    def __init__(self, graph: torch.fx.GraphModule, example: tuple[Tensor, ...], rewritten: bool = False) -> None:
        super().__init__()
        self.graph = graph
        self.example = tuple(a[:2].clone() for a in example)
        if not rewritten:
            rewrite_group_norms(graph)  # after convert_pt2e: the quantizer never saw the arithmetic inside
            rewrite_quantized_silus(graph)  # SiLUs rounded to 8 bits at once: no exp (see quant/execution/compiling.py)
        self._compiled = AotCompiled(graph)

    def train(self, mode: bool = True) -> CompiledInt8:
        """Inference only: the flag is kept, the graph left alone (an exported program refuses train())."""
        self.training = mode
        return self

    def exported(self) -> bytes:
        """The rewritten graph as a `torch.export` program (batch dimension dynamic): what `save` writes."""
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(self.graph, self.example, dynamic_shapes=tuple({0: batch} for _ in self.example))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return buffer.getvalue()

    @classmethod
    def from_exported(cls, blob: bytes, example: tuple[Tensor, ...]) -> CompiledInt8:
        """The model `exported` wrote; it compiles per input shape on first use, as after quantization."""
        require_torchao()
        # What quantizing imported: the quantize / dequantize ops the program calls, and the X86 quantizer's
        # Inductor passes that lower quantize -> conv / linear -> dequantize to oneDNN int8 kernels (without
        # them the same graph compiles to other kernels, with other numerics).
        from torchao.quantization.pt2e import quantize_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # noqa: F401

        program = torch.export.load(io.BytesIO(blob))
        return cls(program.module(), example, rewritten=True)

    @property
    def compile_seconds(self) -> float:
        """Compiling + the first run, summed over the input shapes seen so far."""
        return self._compiled.compile_seconds

    def forward(self, *args: Tensor) -> Tensor:
        return self._compiled(*args)


@dataclass
class InductorPTQStrategy:
    """PTQ through PT2E + Inductor: calibrate, convert, compile at the sampling batch size and check the result."""

    plan: QuantPlan
    recon_method: str = "none"
    warmup_batch: int = 64  # the evaluation's sampling batch: compiled here so sampling times exclude compiling

    def __post_init__(self) -> None:
        require_torchao()
        spec = self.plan.spec
        if not spec.is_int8:
            raise DiffquantError(
                f"backend=x86_inductor runs 8-bit weights and activations only; got quant.weight_bits="
                f"{spec.weight_bits} quant.act_bits={spec.act_bits} (use backend=fbgemm, x86 or qnnpack "
                "for other widths)"
            )
        if spec.observer not in OBSERVERS:
            raise DiffquantError(
                f"quant.observer={spec.observer!r} is not available with backend=x86_inductor; allowed: {', '.join(OBSERVERS)}"
            )
        unsupported = {
            "quant.layer_bits": dict(self.plan.layer_bits) or None,
            "quant.recon.method": None if self.recon_method == "none" else self.recon_method,
            "quant.split_shortcut": self.plan.split_shortcut or None,
            "quant.smooth_alpha": self.plan.smooth_alpha,
            "quant.rotate": self.plan.rotate or None,
            "quant.lowrank_rank": self.plan.lowrank_rank or None,
        }
        given = [f"{key}={value}" for key, value in unsupported.items() if value is not None]
        if given:
            raise DiffquantError(f"backend=x86_inductor does not support {', '.join(given)}; use backend=fbgemm or x86")

    def quantized_graph(self, model: nn.Module, ctx: QuantContext) -> tuple[torch.fx.GraphModule, list[str], dict[str, str]]:
        """The converted graph (not compiled), the layers it quantizes, and the float layers with their reasons."""
        layers = [n for n, m in model.named_modules() if n and isinstance(m, quantizable_types())]
        plan = resolve_plan(self.plan, model, ctx)  # one probe forward, not one per layer
        transposed = [n for n in layers if isinstance(model.get_submodule(n), nn.ConvTranspose2d)]
        layers = [n for n in layers if n not in transposed]  # left to the quantizer's own patterns: reported float
        skipped = [n for n in layers if is_skipped(n, plan.float_layers)]
        graph = quantize_pt2e(model, ctx.calibration(), ctx.calib_batch_size, self.plan.spec, skipped)
        wrapped = [n for n in layers if n not in skipped]
        kept = {
            **float_layer_reasons(model, plan, wrapped),
            **{n: "x86_inductor: X86InductorQuantizer has no pattern for transposed convolutions" for n in transposed},
        }
        return graph, wrapped, kept

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        start = time.perf_counter()
        graph, wrapped, kept = self.quantized_graph(model, ctx)
        quantize_seconds = time.perf_counter() - start
        data = ctx.calibration()
        compiled = CompiledInt8(graph, data.cycled(2))
        inputs = data.cycled(self.warmup_batch)
        with torch.no_grad():  # not compiled vs graph alone: their rounding ties differ (see execution/agreement.py)
            check_against_fp32(compiled(*inputs), graph(*inputs), model(*inputs))
        return QuantOutcome(
            compiled, EXECUTION, wrapped, [], quantize_seconds, compile_seconds=compiled.compile_seconds, float_layers=kept
        )
