"""compiling.py: GroupNorm from per-channel statistics (numerics), the graph rewrite, and compiled models per instance."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffquant.compiling import compile_fp32, export_graph, group_norm_channel_stats, rewrite_group_norms
from diffquant.models.unet import UNet


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


def test_each_compiled_model_runs_its_own_weights() -> None:
    """Module guards are skipped for speed: a second model of the same class must not reuse the first one's graph."""
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 10)
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
        compiled = compile_fp32(model, (x, t))
        with torch.no_grad():
            ref, out = model(x, t), compiled(x, t)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        outputs.append(out)
    assert not torch.allclose(outputs[0], outputs[1])
