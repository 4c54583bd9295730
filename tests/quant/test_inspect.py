"""Activation quantizer ranges and layer-input capture, for fake-quantized and int8 models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffquant.models.unet import UNet
from diffquant.quant.engine import set_engine
from diffquant.quant.inspect import activation_ranges, layer_inputs, probed_layers
from diffquant.quant.plan import QuantPlan
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context, machine_spec


@pytest.fixture(scope="module")
def calibrated() -> dict[str, object]:
    """A tiny UNet quantized with min-max observers at 8 bits (int8) and at 6 bits (fake quantization)."""
    set_engine("fbgemm")
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 1, 8, 8, generator=gen) * 1.5 + 0.25, torch.randint(0, 1000, (16,), generator=gen)
    ctx = calibration_context(x, t, gen)
    quantize = {
        bits: PTQStrategy(QuantPlan(machine_spec(weight_bits=bits, act_bits=bits, observer="minmax"))).quantize(model, ctx)
        for bits in (8, 6)
    }
    return {"model": model, "x": x, "t": t, "int8": quantize[8], "fake": quantize[6]}


def test_int8_and_fakequant_report_every_wrapped_layer(calibrated) -> None:
    int8, fake = calibrated["int8"], calibrated["fake"]
    assert (int8.execution, fake.execution) == ("int8", "fakequant")
    expected = {f"{name}.{side}" for name in int8.wrapped_layers for side in ("input", "output")}
    assert set(activation_ranges(int8.model)) == expected == set(activation_ranges(fake.model))
    for low, high in activation_ranges(int8.model).values():
        assert low <= 0.0 <= high and high - low > 0  # affine grids always contain zero


def test_input_range_of_the_first_conv_is_the_calibration_range(calibrated) -> None:
    """conv_in sees the model input itself: a min-max quantizer spans [min x, max x] up to one step."""
    x = calibrated["x"]
    for key, bits in (("int8", 8), ("fake", 6)):
        low, high = activation_ranges(calibrated[key].model)["conv_in.input"]
        step = (float(x.max()) - float(x.min())) / (2**bits - 1)
        assert low == pytest.approx(float(x.min()), abs=step) and high == pytest.approx(float(x.max()), abs=step)


def test_float_model_has_no_quantizer_ranges(calibrated) -> None:
    assert activation_ranges(calibrated["model"]) == {}


def test_layer_inputs_capture_what_each_layer_receives(calibrated) -> None:
    model, x, t = calibrated["model"], calibrated["x"], calibrated["t"]
    int8 = calibrated["int8"].model
    seen = layer_inputs(int8, lambda: int8(x, t))
    assert set(seen) == set(calibrated["int8"].wrapped_layers) == set(probed_layers(int8))
    assert torch.equal(seen["conv_in"], x.flatten())
    floats = layer_inputs(model, lambda: model(x, t), max_values=100)
    assert set(floats) == {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert all(v.numel() <= 100 for v in floats.values())
    assert set(floats["conv_in"].tolist()) <= set(x.flatten().tolist())  # a subset of the real values
    assert not any(h for m in int8.modules() for h in m._forward_pre_hooks.values())  # hooks removed
