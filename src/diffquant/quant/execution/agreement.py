"""Does a compiled int8 graph compute what its FX graph computes? End to end against FP32, and layer by layer.

Both run the same integer grids, but they break rounding ties differently: the graph dequantizes
and adds float32 products, the oneDNN kernels accumulate exact int32 sums, and Inductor's fused
loops reassociate GroupNorm / SiLU. Each such tie moves one 8-bit value by one step, and a deep
network amplifies those steps: on a random-weight `unet_tiny` the compiled output and the graph's
differ by a relative 0.027 end to end while every layer, fed the compiled model's own inputs,
agrees to one step in 5e-5 of its values (docs/results/2026-12-02-cpu-speed-avx2.md). So the
end-to-end distance between the two is no test of the kernels; what a miscompile or a saturating
kernel changes is how far the result lies from FP32 (`check_against_fp32`). `teacher_forced`
measures the per-layer agreement directly (tests and `benchmarks/inductor_agreement.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffquant.errors import DiffquantError
from diffquant.metrics.quality import relative_error

FP32_MARGIN = 1.25  # compiled error vs FP32 / graph error vs FP32: 1.00 measured when exact, 3.7 when saturating
FLOAT_FLOOR = 1e-3  # relative: float reassociation and the GroupNorm / SiLU rewrites when little is quantized


def check_against_fp32(compiled: Tensor, graph: Tensor, fp32: Tensor) -> None:
    """Refuse a compiled model farther from FP32 than its graph is (beyond FP32_MARGIN): one line with the errors."""
    quantized, compiled_error = relative_error(graph, fp32), relative_error(compiled, fp32)
    if not compiled_error <= FP32_MARGIN * quantized + FLOAT_FLOOR:  # a wrong or unrelated graph, or saturation
        raise DiffquantError(
            f"backend=x86_inductor: the compiled model is farther from FP32 than its graph (relative error "
            f"{compiled_error:.3g} against {quantized:.3g}; compiled vs graph {relative_error(compiled, graph):.3g}): "
            "a miscompile, or int8 kernels that saturate on this CPU"
        )


def is_activation_quantize(node: torch.fx.Node) -> bool:
    """A node that rounds an activation to its 8-bit grid (weights are stored quantized: no such node)."""
    return node.op == "call_function" and str(node.target).startswith("quantized_decomposed.quantize_per_tensor")


def with_quantized_outputs(graph: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[str]]:
    """A copy of `graph` that returns (its output, every activation's int8 tensor), and those nodes' names."""
    copied = copy.deepcopy(graph)
    nodes = [n for n in copied.graph.nodes if is_activation_quantize(n)]
    output = next(n for n in copied.graph.nodes if n.op == "output")
    (result,) = output.args  # the exported graph returns one tensor (maybe in a 1-tuple)
    result = result[0] if isinstance(result, (tuple, list)) else result
    copied.graph.erase_node(output)
    copied.graph.output((result, *nodes))
    copied.graph._codegen = torch.fx.graph.CodeGen()  # a plain tuple out, not the exported pytree
    copied.recompile()
    return copied, [n.name for n in nodes]


@dataclass(frozen=True)
class LayerAgreement:
    """One quantized activation: the share of its values off by a step or more, and the largest difference in steps."""

    name: str
    differing: float
    max_steps: int


class _TeacherForced(torch.fx.Interpreter):
    """Runs the graph, but every quantize node's result is replaced by the compiled model's, after comparing them."""

    def __init__(self, graph: torch.fx.GraphModule, forced: dict[str, Tensor]) -> None:
        super().__init__(graph)
        self.forced, self.found = forced, []

    def run_node(self, node: torch.fx.Node) -> object:
        out = super().run_node(node)
        if node.name not in self.forced:
            return out
        steps = (out.to(torch.int32) - self.forced[node.name].to(torch.int32)).abs()
        self.found.append(LayerAgreement(node.name, float((steps > 0).float().mean()), int(steps.max())))
        return self.forced[node.name]


@torch.no_grad()
def teacher_forced(
    graph: torch.fx.GraphModule, inputs: tuple[Tensor, ...], compile_fn: Callable[[torch.fx.GraphModule], Callable[..., object]]
) -> tuple[Tensor, list[LayerAgreement]]:
    """Compile `graph` with every int8 activation as an extra output; compare each with the graph's op fed the
    compiled model's own inputs. Returns the compiled output and one LayerAgreement per quantized activation."""
    multi, names = with_quantized_outputs(graph)
    out, *quantized = compile_fn(multi)(*inputs)
    interpreter = _TeacherForced(graph, dict(zip(names, quantized)))
    interpreter.run(*inputs)
    return out, interpreter.found
