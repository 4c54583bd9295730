"""Compiling a model for the CPU with Inductor: frozen weights, a C++ wrapper, and a GroupNorm it vectorizes.

Shared by the FP32 baseline (`benchmarks/speed.py`) and `backend=x86_inductor`, so both are
compiled the same way. Profiling unet_tiny at batch 64 (16x16, 4 channels per group) showed:
- Inductor lowers `group_norm` on channels_last activations to reductions over 4 channels at a
  time (16-lane vectors masked to 4), twice (mean, then variance): 40 % of the int8 model's time
  outside the convolutions. `group_norm_channel_stats` reduces every channel over the pixels with
  full vectors (channels are the contiguous axis), combines the channels of a group with two tiny
  matrix products, and normalizes in one fused multiply-add: 14 -> 12 ms per int8 forward, and
  faster FP32 too.
- The Python wrapper and Dynamo's guards on every parameter cost 1-1.5 ms per call: the C++
  wrapper (`cpp_wrapper`) and no guards on module attributes remove most of it. Without module
  guards a compiled graph must not outlive its model: `compile_frozen` resets Dynamo first.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def group_norm_channel_stats(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
                             eps: float = 1e-5) -> Tensor:
    """`F.group_norm` for 4-D input from per-channel statistics (vectorizes over channels_last).

    Each channel's pixels are shifted by its first pixel before the sums, so the variance keeps
    its precision when the mean dwarfs the spread; channel moments combine into group moments
    exactly (mean of the channel variances plus the variance of the channel means).
    """
    n, c = x.shape[:2]
    per_group = c // num_groups
    members = (torch.arange(c, device=x.device)[:, None] // per_group
               == torch.arange(num_groups, device=x.device)[None]).to(x.dtype)  # (C, G)
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


def _group_norm_node(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                     eps: float = 1e-5, cudnn_enabled: bool = True) -> Tensor:
    """`aten.group_norm`'s signature, computed by `group_norm_channel_stats` for 4-D input."""
    if x.dim() != 4:
        return torch.ops.aten.group_norm.default(x, num_groups, weight, bias, eps, cudnn_enabled)
    return group_norm_channel_stats(x, num_groups, weight, bias, eps)


def rewrite_group_norms(graph: torch.fx.GraphModule) -> int:
    """In place on an exported graph: each `aten.group_norm` node calls `group_norm_channel_stats`; returns how many.

    Applied after quantization, so no quantizer annotates the arithmetic inside.
    """
    nodes = [n for n in graph.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.group_norm.default]
    for node in nodes:
        with graph.graph.inserting_before(node):
            new = graph.graph.call_function(_group_norm_node, node.args, node.kwargs)
        node.replace_all_uses_with(new)
        graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    return len(nodes)


def export_graph(model: nn.Module, example: tuple[Tensor, ...]) -> torch.fx.GraphModule:
    """torch.export with the batch dimension of every input dynamic, as a GraphModule of aten ops."""
    batch = torch.export.Dim("batch")
    return torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example)).module()


def compile_fp32(model: nn.Module, example: tuple[Tensor, ...], reset: bool = True) -> Callable[..., Tensor]:
    """An FP32 model compiled as `backend=x86_inductor` compiles int8: exported, GroupNorm rewritten, frozen."""
    graph = export_graph(model, example)
    rewrite_group_norms(graph)
    return compile_frozen(graph, reset=reset)


def compile_frozen(model: Callable[..., Tensor], reset: bool = True) -> Callable[..., Tensor]:
    """torch.compile for repeated CPU inference at fixed shapes: freezing, C++ wrapper, no module guards.

    Sets `torch._inductor.config.freezing = True` globally (the PT2E int8 kernels are only lowered
    that way). `reset` clears Dynamo's cache first, so no graph compiled for an earlier model can
    serve this one (graphs compiled earlier in the process recompile on their next call).
    """
    torch._inductor.config.freezing = True
    if reset:
        torch._dynamo.reset()
    return torch.compile(model, dynamic=False, options={
        "cpp_wrapper": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
