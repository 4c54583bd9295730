"""quant/execution/compiling.py: GroupNorm from per-channel statistics (numerics), the graph rewrite, and compiled models per instance."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffquant.models.unet import UNet
from diffquant.quant.execution.compiling import (
    compile_fp32,
    export_graph,
    group_norm_channel_stats,
    merge_sibling_linears,
    rewrite_group_norms,
    rewrite_quantized_silus,
    silu_rational,
)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "mean-1000"])
def test_group_norm_from_channel_stats_matches_a_float64_reference(channels_last: bool, affine: bool, offset: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 8, 8, generator=gen) * 0.5 + offset + torch.randn(1, 32, 1, 1, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = (torch.randn(32, generator=gen), torch.randn(32, generator=gen)) if affine else (None, None)
    ref = F.group_norm(x.double(), 8, None if weight is None else weight.double(), None if bias is None else bias.double())
    ours = group_norm_channel_stats(x, 8, weight, bias)
    # mean 1000, spread 0.5: the one-pass E[x^2] - E[x]^2 would lose every digit; the shifted sums keep fp32 precision
    torch.testing.assert_close(ours.double(), ref, atol=2e-3 if offset else 2e-5, rtol=0)


def test_rewrite_replaces_every_group_norm_node_of_an_exported_model() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.randint(0, 1000, (3,))
    graph = export_graph(model, (x, t))
    norms = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert rewrite_group_norms(graph) == norms
    assert not any(n.target is torch.ops.aten.group_norm.default for n in graph.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(graph(x[:2], t[:2]), model(x[:2], t[:2]), atol=1e-5, rtol=1e-5)  # batch stays dynamic


def test_linears_of_one_input_merge_into_one_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.randint(0, 1000, (3,))
    graph = export_graph(model, (x, t))
    projections = sum(name.endswith("temb_proj") for name, _ in model.named_modules())
    assert merge_sibling_linears(graph) == projections - 1  # every block's time projection reads SiLU(temb)
    linears = [n for n in graph.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == 3  # the time MLP's two and the merged projection
    with torch.no_grad():
        torch.testing.assert_close(graph(x, t), model(x, t), atol=0, rtol=0)
    assert merge_sibling_linears(graph) == 0


def test_rational_silu_is_within_its_stated_error_of_a_float64_silu() -> None:
    x = torch.cat([torch.linspace(-60, 60, 200_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 12.0, -12.0, 1e4, -1e4])])
    ref = F.silu(x.double())
    error = (silu_rational(x).double() - ref).abs()
    bound = 6.5e-6 * x.double().abs().clamp(min=1.0)  # relative 6e-6 (the clamp at |x| = 12), float32 rounding on top
    assert (error <= bound).all(), f"worst excess {(error - bound).max().item():.3g} at x={x[(error - bound).argmax()].item()}"
    inner = x.abs() < 8  # the fit itself is good to 1.3e-7 on the sigmoid; float32 rounding adds ~6e-8 per unit of |x|
    assert (error[inner] <= 3e-7 * x[inner].double().abs().clamp(min=1.0)).all()
    assert silu_rational(torch.tensor([0.0])).item() == 0.0


def test_only_silus_that_are_quantized_at_once_are_rewritten() -> None:
    from diffquant.quant.execution.compiling import replace_calls

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, b = F.silu(x), F.silu(x + 1)
            q = torch.ops.quantized_decomposed.quantize_per_tensor.default(a, 0.05, 0, 0, 255, torch.uint8)
            return q, b * 2  # b's float value is used: it must stay exact

    importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers the quantized_decomposed ops PT2E emits
    graph = export_graph(Net(), (torch.randn(4, 3),))
    silus = [n for n in graph.graph.nodes if n.target is torch.ops.aten.silu.default]
    assert len(silus) == 2
    assert rewrite_quantized_silus(graph) == 1
    left = [n for n in graph.graph.nodes if n.target is torch.ops.aten.silu.default]
    assert len(left) == 1 and all(u.target is torch.ops.aten.mul.Tensor for u in left[0].users)
    x = torch.linspace(-20, 20, 600).reshape(200, 3)
    q, b = graph(x)
    expected = torch.clamp(torch.round(F.silu(x) / 0.05), 0, 255).to(torch.uint8)
    assert (q.int() - expected.int()).abs().max() <= 1  # a value on a rounding boundary may move one step
    assert (q != expected).float().mean() < 0.01
    torch.testing.assert_close(b, F.silu(x + 1) * 2)
    assert replace_calls(graph, lambda n: False, silu_rational) == 0


@pytest.mark.heavy
@pytest.mark.slow
def test_aot_compiled_compiles_once_per_shape_accepts_strided_inputs_and_runs_its_own_weights() -> None:
    """One compile per input shape (a strided input of a known shape reuses it); the weights are frozen into
    each compiled library, so a second model of the same class must not reuse the first's (3 compiles in all)."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 10)
    compiled = compile_fp32(model, (x[:2], t[:2]))
    strided = torch.randn(3, 1, 8, 16)[..., ::2]  # same shape as x, not contiguous
    with torch.no_grad():
        first = compiled(x, t)
        seconds = compiled.compile_seconds
        torch.testing.assert_close(compiled(strided, t), model(strided, t), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(compiled(x[:1], t[:1]), model(x[:1], t[:1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first, model(x, t), atol=1e-4, rtol=1e-4)
    assert seconds > 0 and compiled.compile_seconds > seconds  # the batch-1 call compiled again, the strided one did not
    assert sorted(compiled.runners) == [((1, 1, 8, 8), (1,)), ((3, 1, 8, 8), (3,))]

    torch.manual_seed(1)
    other = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    other_compiled = compile_fp32(other, (x, t))
    with torch.no_grad():
        other_out = other_compiled(x, t)
        torch.testing.assert_close(other_out, other(x, t), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(other_out, first)
