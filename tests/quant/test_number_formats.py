"""Simulated number formats against reference encoders written here from the specifications (edge values included)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffquant.errors import DiffquantError
from diffquant.quant.number_formats import FormatFakeQuantize, group_int, quantize_dequantize, round_e2m1
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from helpers import random_pairs

FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def reference_e2m1(v: float) -> float:
    """Nearest FP4 (E2M1) value by enumeration; a tie goes to the value with an even mantissa bit (even index)."""
    mag = min(abs(v), 6.0)
    best = min(range(len(FP4)), key=lambda i: (abs(FP4[i] - mag), i % 2))
    return math.copysign(FP4[best], v) if v != 0 else 0.0


def reference_mxfp4(block: list[float]) -> list[float]:
    """OCP MX v1.0: X = 2^(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1; elements rounded, saturated."""
    amax = max(abs(v) for v in block)
    if amax == 0:
        return [0.0] * len(block)
    scale = 2.0 ** (math.floor(math.log2(amax)) - 2)
    return [reference_e2m1(v / scale) * scale for v in block]


EDGES = [0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 100.0, -0.25, -2.5, -5.0, -7.0, 0.1, 2.9]


def test_e2m1_rounds_to_nearest_with_ties_to_even_and_saturates() -> None:
    got = round_e2m1(torch.tensor(EDGES)).tolist()
    assert got == [reference_e2m1(v) for v in EDGES]
    assert got[:10] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0]  # the ties and the saturation, spelled out


def test_mxfp4_blocks_of_32_share_a_power_of_two_scale() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=g) * torch.tensor([0.01, 1.0, 300.0])[:, None]
    x[0, :32] = 0.0  # an all-zero block
    x[1, 40] = 6.0 * 2**3  # a block whose maximum sits exactly on the top of its grid
    got = quantize_dequantize(x, "mxfp4")
    expected = torch.tensor([sum((reference_mxfp4(row[i : i + 32].tolist()) for i in (0, 32)), []) for row in x])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got[1, 40] == 48.0 and torch.equal(got[0, :32], torch.zeros(32))


def test_nvfp4_uses_blocks_of_16_with_e4m3_scales_under_a_tensor_scale() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, generator=g)
    x[1, 16:32] *= 1e-3  # a small block: its own scale keeps its precision
    got = quantize_dequantize(x, "nvfp4")
    tensor_scale = float(x.abs().max()) / (6 * 448)
    expected = []
    for row in x:
        out = []
        for i in range(0, 48, 16):
            block = row[i : i + 16]
            s = torch.tensor(float(block.abs().max()) / 6 / tensor_scale).to(torch.float8_e4m3fn).float().item() * tensor_scale
            out += [reference_e2m1(v / s) * s for v in block.tolist()]
        expected.append(out)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=0)
    small = x[1, 16:32]
    assert float((got[1, 16:32] - small).abs().max()) < 0.3 * float(small.abs().max())


@pytest.mark.parametrize(("name", "top"), [("fp8_e4m3", 448.0), ("fp8_e5m2", 57344.0)])
def test_fp8_scales_per_tensor_and_clamps_to_a_calibrated_range(name: str, top: float) -> None:
    x = torch.tensor([0.0, 1e-3, 0.3, -2.0, 4.0])
    got = quantize_dequantize(x, name)
    dtype = torch.float8_e4m3fn if name == "fp8_e4m3" else torch.float8_e5m2
    expected = (x / (4.0 / top)).to(dtype).float() * (4.0 / top)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    clamped = quantize_dequantize(torch.tensor([10.0, -10.0]), name, amax=torch.tensor(4.0))
    assert clamped.tolist() == [4.0, -4.0]


def test_group_int_keeps_each_group_within_half_a_step() -> None:
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(2))
    x[0, :32] *= 100  # one wide group: the others keep their own fine steps
    got = group_int(x, bits=4, group=32)
    for r in range(4):
        for i in range(0, 96, 32):
            block = x[r, i : i + 32]
            step = float(block.max().clamp(min=0) - block.min().clamp(max=0)) / 15
            assert float((got[r, i : i + 32] - block).abs().max()) <= step / 2 + 1e-5


def test_weight_fake_quant_blocks_along_each_outputs_inputs_and_passes_gradients() -> None:
    conv = nn.Conv2d(4, 3, 3)
    fq = FormatFakeQuantize("mxfp4", weight=True)
    w = conv.weight.detach().clone().requires_grad_(True)
    out = fq(w)
    expected = quantize_dequantize(w.detach().reshape(3, -1), "mxfp4").reshape(w.shape)
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_fp8_activations_observe_their_range_then_hold_it() -> None:
    fq = FormatFakeQuantize("fp8_e4m3")
    fq(torch.tensor([[1.0, -3.0]]))
    fq.disable_observer()
    out = fq(torch.tensor([[10.0, 0.5]]))
    assert float(fq.amax) == 3.0 and out[0, 0] == 3.0  # clamped to the calibrated 3.0


def test_qconfig_picks_the_format_and_marks_it_simulated() -> None:
    spec = QuantSpec(weight_format="nvfp4", act_format="fp8_e4m3", act_bits=8)
    qconfig = make_qconfig(spec)
    assert isinstance(qconfig.weight(), FormatFakeQuantize) and qconfig.weight().fmt == "nvfp4"
    assert qconfig.activation().fmt == "fp8_e4m3"
    assert not spec.is_int8 and spec.simulated_formats
    assert not QuantSpec(group_size=64).is_int8
    with pytest.raises(DiffquantError, match=r"quant\.act_format='fp6' is not a number format; allowed: int, fp8_e4m3"):
        QuantSpec(act_format="fp6")


def tiny_unet_and_pairs() -> tuple[nn.Module, object]:
    from diffquant.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    return model, random_pairs(32, (1, 8, 8), seed=3)


@pytest.mark.parametrize(
    ("settings", "fmt"),
    [({"weight_format": "mxfp4", "act_format": "fp8_e4m3"}, "mxfp4"), ({"weight_bits": 4, "group_size": 16}, "int")],
)
def test_ptq_with_a_simulated_format_fake_quantizes_every_layer_in_it(settings: dict, fmt: str) -> None:
    import diffquant
    from diffquant.metrics.quality import relative_error

    model, calib = tiny_unet_and_pairs()
    q = diffquant.quantize(model, calib, bias_correction=0, sensitivity=False, **settings)
    weights = [m for m in q.modules() if isinstance(m, FormatFakeQuantize) and m.weight]
    assert weights and all(m.fmt == fmt for m in weights)
    assert q.diffquant_recipe["execution"] == "fakequant"  # simulated: torch.ao has no kernel for these formats
    x, t = calib.x[:8], calib.t[:8]
    with torch.no_grad():
        assert relative_error(q(x, t), model(x, t)) < 0.5


def test_a_group_size_that_does_not_divide_a_layer_is_refused_by_name() -> None:
    import diffquant

    model, calib = tiny_unet_and_pairs()
    with pytest.raises(DiffquantError, match=r"quant\.group_size=96 does not divide the \d+ weights per output of layer "):
        diffquant.quantize(model, calib, weight_bits=4, group_size=96)
