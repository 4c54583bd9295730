"""Compiling a model for the CPU with AOTInductor: frozen weights, no Dynamo, and a GroupNorm it vectorizes.

Shared by the FP32 baseline (`benchmarks/speed.py`) and `backend=x86_inductor`, so both are
compiled the same way. What profiling unet_tiny showed (figures: docs/results/2026-11-26-int8-profile.md):
- Inductor lowers `group_norm` on channels_last activations to reductions over 4 channels at a
  time (16-lane vectors masked to 4), twice (mean, then variance): most of the int8 model's time
  outside the convolutions. `group_norm_channel_stats` reduces every channel over the pixels with
  full vectors (channels are the contiguous axis), combines the channels of a group with two tiny
  matrix products, and normalizes in one fused multiply-add, for int8 and FP32 alike.
- SiLU (exp, then a division) dominated each fused GroupNorm -> SiLU -> quantize loop. Where its
  result is rounded to 8 bits at once, `silu_rational` computes it with one division and no exp
  (its error is far below half a quantization step). FP32 keeps the exact SiLU.
- Each residual block projected the same SiLU(time embedding) with its own small GEMM:
  `merge_sibling_linears` makes them one (exact).
- `torch.compile`'s Python wrapper, Dynamo's guards and its entry cost a fixed overhead per call;
  its C++ wrapper without module guards removed most of that, AOTInductor the rest: `AotCompiled`
  exports the graph at each input shape and compiles it ahead of time into a shared library with
  the frozen weights inside (bit-identical output). No Dynamo cache is involved, so no compiled graph can serve another model.
- On AVX2, Inductor's loads of 8 uint8 lanes took ATen's slow partial-load path: `avx2_loads` rewrites
  them while compiling (1.27-1.37x on unet_tiny's int8 forward with AVX2 code, two A/Bs).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffquant.quant.execution.avx2_loads import fast_byte_loads


def group_norm_channel_stats(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """`F.group_norm` for 4-D input from per-channel statistics (vectorizes over channels_last).

    Each channel's pixels are shifted by its first pixel before the sums, so the variance keeps
    its precision when the mean dwarfs the spread; channel moments combine into group moments
    exactly (mean of the channel variances plus the variance of the channel means).
    """
    n, c = x.shape[:2]
    per_group = c // num_groups
    members = (torch.arange(c, device=x.device)[:, None] // per_group == torch.arange(num_groups, device=x.device)[None]).to(
        x.dtype
    )  # (C, G)
    shift = x[:, :, :1, :1]
    centred = x - shift
    moments = torch.cat([centred.mean((2, 3)), (centred * centred).mean((2, 3))])  # (2N, C)
    channel_mean = moments[:n] + shift[:, :, 0, 0]
    channel_var = (moments[n:] - moments[:n] * moments[:n]).clamp(min=0)
    group_mean = (channel_mean @ members) / per_group  # (N, G)
    spread = channel_mean - group_mean @ members.T
    group_var = ((channel_var + spread * spread) @ members) / per_group
    rstd = torch.rsqrt(group_var + eps)
    coef = torch.cat([rstd, group_mean * rstd]) @ members.T  # (2N, C): per-channel 1/σ and μ/σ
    scale = coef[:n] if weight is None else coef[:n] * weight
    offset = -coef[n:] if weight is None else -coef[n:] * weight
    if bias is not None:
        offset = offset + bias
    return x * scale[:, :, None, None] + offset[:, :, None, None]


def _group_norm_node(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enabled: bool = True,
) -> Tensor:
    """`aten.group_norm`'s signature, computed by `group_norm_channel_stats` for 4-D input."""
    if x.dim() != 4:
        return torch.ops.aten.group_norm.default(x, num_groups, weight, bias, eps, cudnn_enabled)
    return group_norm_channel_stats(x, num_groups, weight, bias, eps)


def replace_calls(
    graph: torch.fx.GraphModule, selected: Callable[[torch.fx.Node], bool], replacement: Callable[..., Tensor]
) -> int:
    """In place: every selected `call_function` node calls `replacement` with its arguments instead; returns how many."""
    nodes = [n for n in graph.graph.nodes if n.op == "call_function" and selected(n)]
    for node in nodes:
        with graph.graph.inserting_before(node):
            new = graph.graph.call_function(replacement, node.args, node.kwargs)
        node.replace_all_uses_with(new)
        graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    return len(nodes)


def rewrite_group_norms(graph: torch.fx.GraphModule) -> int:
    """In place on an exported graph: each `aten.group_norm` node calls `group_norm_channel_stats`; returns how many.

    Applied after quantization, so no quantizer annotates the arithmetic inside.
    """
    return replace_calls(graph, lambda n: n.target is torch.ops.aten.group_norm.default, _group_norm_node)


def merge_sibling_linears(graph: torch.fx.GraphModule) -> int:
    """In place: `aten.linear` nodes that read the same tensor become one linear and slices of its output; returns
    how many linears were merged away.

    A UNet projects the same time embedding once per residual block (11 small GEMMs on unet_tiny, each
    behind its own SiLU of that embedding): one GEMM is cheaper. Identical SiLU nodes are merged first.
    The weights are concatenated along the output axis, so per-output-channel quantization is unchanged.
    """
    silus: dict[tuple[object, ...], torch.fx.Node] = {}
    for node in [n for n in graph.graph.nodes if n.target is torch.ops.aten.silu.default]:
        key = (node.args, tuple(node.kwargs.items()))
        if key in silus:
            node.replace_all_uses_with(silus[key])
            graph.graph.erase_node(node)
        else:
            silus[key] = node
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in graph.graph.nodes:
        if (
            node.target is torch.ops.aten.linear.default
            and all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in node.args[1:3])
            and len(node.args) == 3
        ):
            groups.setdefault(node.args[0], []).append(node)
    merged = 0
    for index, nodes in enumerate(g for g in groups.values() if len(g) > 1):
        weights = [graph.get_parameter(n.args[1].target) for n in nodes]
        biases = [graph.get_parameter(n.args[2].target) for n in nodes]
        names = [f"merged_linear_{index}_weight", f"merged_linear_{index}_bias"]
        for name, parts in zip(names, (weights, biases)):
            graph.register_parameter(name, nn.Parameter(torch.cat([p.detach() for p in parts]), requires_grad=False))
        with graph.graph.inserting_before(nodes[0]):
            attrs = [graph.graph.get_attr(name) for name in names]
            out = graph.graph.call_function(torch.ops.aten.linear.default, (nodes[0].args[0], *attrs))
        # the quantizer finds linears by the module they came from: the merged one passes for the first
        out.meta.update({k: v for k, v in nodes[0].meta.items() if k in ("nn_module_stack", "source_fn_stack", "stack_trace")})
        start = 0
        for node, weight in zip(nodes, weights):
            with graph.graph.inserting_before(node):
                part = graph.graph.call_function(torch.ops.aten.slice.Tensor, (out, -1, start, start + weight.shape[0]))
            node.replace_all_uses_with(part)
            graph.graph.erase_node(node)
            start += weight.shape[0]
        merged += len(nodes) - 1
    graph.graph.eliminate_dead_code()
    graph.graph.lint()
    graph.recompile()
    return merged


# sigmoid(y) - 1/2 = y P(y^2) / Q(y^2) on |y| <= 12 (a minimax fit, max error 1.3e-7); clamped beyond
SIGMOID_P = (0.24999967288904476, 0.007766621762124298, 3.736323709675544e-05, 1.7604373320212474e-08)
SIGMOID_Q = (1.0, 0.11439857086621388, 0.001349683514609459, 2.4238476452023336e-06)
SIGMOID_CLAMP = 12.0


def silu_rational(x: Tensor) -> Tensor:
    """SiLU as x * (1/2 + y P(y^2) / Q(y^2)) with y = clamp(x, +-12): no exp; error <= 6e-6 * max(1, |x|)."""
    y = x.clamp(-SIGMOID_CLAMP, SIGMOID_CLAMP)
    z = y * y
    p = ((SIGMOID_P[3] * z + SIGMOID_P[2]) * z + SIGMOID_P[1]) * z + SIGMOID_P[0]
    q = ((SIGMOID_Q[3] * z + SIGMOID_Q[2]) * z + SIGMOID_Q[1]) * z + SIGMOID_Q[0]
    return x * (0.5 + y * p / q)


def rewrite_quantized_silus(graph: torch.fx.GraphModule) -> int:
    """In place on a converted PT2E graph: each `aten.silu` whose every user quantizes it calls `silu_rational`; returns how many.

    Only there: the result is rounded to an 8-bit grid at once, whose half step (here ~0.02) dwarfs
    the approximation's error; a SiLU whose float result is used elsewhere stays exact.
    """

    def quantized_only(node: torch.fx.Node) -> bool:
        return (
            node.target is torch.ops.aten.silu.default
            and bool(node.users)
            and all(str(user.target).startswith("quantized_decomposed.quantize_per_tensor") for user in node.users)
        )

    return replace_calls(graph, quantized_only, silu_rational)


def export_graph(model: nn.Module, example: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    """torch.export with the batch dimension of every input dynamic, as a GraphModule of aten ops."""
    batch = torch.export.Dim("batch")
    return torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example)).module()


def export_merged(model: nn.Module, example: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    """`export_graph` with `merge_sibling_linears` applied; a merged graph is exported again, so every node has
    the metadata (shapes, source module) that quantizers and Inductor read."""
    graph = export_graph(model, example)
    return export_graph(graph, example) if merge_sibling_linears(graph) else graph


def compile_fp32(model: nn.Module, example: tuple[Tensor, ...]) -> AotCompiled:
    """An FP32 model compiled as `backend=x86_inductor` compiles int8: exported, GroupNorm rewritten, AOT-compiled."""
    graph = export_merged(model, example)
    rewrite_group_norms(graph)
    return AotCompiled(graph)


def compile_aot(model: nn.Module, example: tuple[Tensor, ...]) -> Callable[..., Tensor]:
    """AOTInductor at the example's shapes, with frozen weights: export, compile to a shared library, load it.

    Sets `torch._inductor.config.freezing = True` globally: the PT2E int8 kernels are only lowered
    that way (as a per-compile option Inductor cannot lower `onednn.qconv_prepack`).
    """
    torch._inductor.config.freezing = True
    package = io.BytesIO()
    with fast_byte_loads():  # AVX2: byte vectors loaded in one instruction (see avx2_loads.py)
        torch._inductor.aoti_compile_and_package(torch.export.export(model, example), package_path=package)
    package.seek(0)
    return torch._inductor.aoti_load_package(package)


class AotCompiled:
    """`model` compiled by `compile_aot` once per input shape, on the first call at that shape (static shapes:
    Inductor's dynamic-shape lowering of the int8 convolution fails)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.runners: dict[tuple[tuple[int, ...], ...], Callable[..., Tensor]] = {}
        self.compile_seconds = 0.0  # compiling + the first run, summed over shapes

    def __call__(self, *args: Tensor) -> Tensor:
        args = tuple(a.contiguous() for a in args)  # the library assumes the example's (contiguous) strides
        key = tuple(tuple(a.shape) for a in args)
        if key in self.runners:
            return self.runners[key](*args)
        start = time.perf_counter()
        self.runners[key] = compile_aot(self.model, args)
        out = self.runners[key](*args)
        self.compile_seconds += time.perf_counter() - start
        return out
