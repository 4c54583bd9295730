"""Layer roles (first / last layer called) and the multiply-accumulate share of the quantized layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from diffquant.errors import DiffquantError
from diffquant.models.dit import DiT
from diffquant.models.unet import UNet
from diffquant.quant.coverage import call_order, edge_layers, layer_macs, mac_fraction
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantPlan
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context, machine_spec


class ConvThenLinear(nn.Module):
    """Conv 1->4 (3x3, 8x8 map) then a Linear 256->10, then a float matmul: MACs known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = self.head(self.conv(x).flatten(1))
        return y @ torch.ones(10, 10)


class Scaled(nn.Module):
    """Scales x before the first layer (as models that normalize or cast their input do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvThenLinear()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner(2.0 * x, t)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()


def test_roles_are_the_first_and_last_layers_called() -> None:
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    order, readers = call_order(tiny_unet(), x, t)
    assert order[0] == "time_embed.0" and order[-1] == "conv_out" and len(order) == len(set(order))
    assert readers == ["conv_in"]  # the time embedding runs first, but conv_in reads x_t
    assert edge_layers(tiny_unet(), ["output"], x, t) == ["conv_out"]
    assert edge_layers(tiny_unet(), ["input", "output"], x, t) == ["conv_in", "conv_out"]
    assert edge_layers(tiny_unet(), [], x, t) == []
    dit = DiT(image_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2).eval()
    assert edge_layers(dit, ["input", "output"], x, t) == ["patch_embed", "final.linear"]
    scaled = Scaled()  # no layer reads x itself: the first layer called stands in
    assert edge_layers(scaled, ["input", "output"], x, t) == ["inner.conv", "inner.head"]
    with pytest.raises(DiffquantError, match="quant.keep_float"):
        edge_layers(tiny_unet(), ["middle"], x, t)


def test_macs_match_closed_form() -> None:
    model, x, t = ConvThenLinear(), torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    conv, head, matmul = 3 * 4 * 64 * 9, 3 * 10 * 256, 3 * 10 * 10
    per_module, total = layer_macs(model, x, t)
    assert (per_module["conv"], per_module["head"], total) == (conv, head, conv + head + matmul)
    assert mac_fraction(model, ["conv", "head"], x, t) == pytest.approx((conv + head) / total)
    assert mac_fraction(model, [], x, t) == 0.0


def test_keep_float_output_leaves_only_the_last_layer_in_float() -> None:
    set_engine("fbgemm")
    model = tiny_unet()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    out = PTQStrategy(QuantPlan(machine_spec(), keep_float=("output",))).quantize(model, calibration_context(x, t, gen))
    assert out.execution == "int8" and "conv_out" not in out.wrapped_layers
    assert type(out.model.conv_out) is nn.Conv2d and isinstance(out.model.conv_in.module, nnq.Conv2d)
    with torch.no_grad():  # the float output layer computes exactly what the FP32 layer does on its input
        h = torch.randn(4, 16, 8, 8)
        assert torch.equal(out.model.conv_out(h), model.conv_out(h))
    share = mac_fraction(model, out.wrapped_layers, x[:1], t[:1])
    assert 0.95 < share < 1.0
