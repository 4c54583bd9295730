"""Scripted int8 execution: frozen TorchScript graphs per input shape, bit-identical to the eager int8 model."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import Tensor, nn

from diffquant.models.dit import DiT
from diffquant.models.unet import UNet
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import set_engine
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context

CASES = [
    ("fbgemm", "unet", True, False),
    ("x86", "unet", False, True),
    ("qnnpack", "unet", True, False),
    ("fbgemm", "dit", True, False),
]


def quantized(
    arch: str, engine: str, dynamic: bool, symmetric: bool, script: bool
) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """(float model, its W8A8 PTQ int8 model, calibration x, t) for a small UNet or DiT."""
    set_engine(engine)
    torch.manual_seed(0)
    model = (
        UNet(base_channels=16, channel_mults=(1, 2), image_size=16, groups=4)
        if arch == "unet"
        else DiT(in_channels=1, image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0)
    ).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 1, 16, 16, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    plan = QuantPlan(QuantSpec(symmetric=symmetric), dynamic_input=dynamic, script=script)
    out = PTQStrategy(plan, warmup_batch=16).quantize(model, calibration_context(x, t, gen))
    assert out.execution == "int8"
    return model, out.model, x, t


@pytest.mark.parametrize(
    ("engine", "arch", "dynamic", "symmetric"),
    CASES,
    ids=["fbgemm-dynamic", "x86-static", "qnnpack-dynamic", "dit-fbgemm-dynamic"],
)
def test_scripted_int8_is_bit_identical_to_eager_at_every_shape_and_range(
    engine: str, arch: str, dynamic: bool, symmetric: bool
) -> None:
    _, scripted, x, t = quantized(arch, engine, dynamic, symmetric, script=True)
    assert isinstance(scripted, ScriptedInt8) and len(scripted._graphs) == 1  # traced at the warm-up batch (16)
    with torch.no_grad():
        for xs, ts in [(x, t), (x * 4, t.flip(0)), (x[:5] * 0.1, t[:5])]:  # new ranges at one shape; a new shape
            assert scripted.graph_for(xs, ts) is not None
            assert torch.equal(scripted(xs, ts), scripted.eager(xs, ts))
    assert sorted(k[0][0] for k in scripted._graphs) == [5, 16]  # one graph per input shape
    assert set(scripted.state_dict()) == {f"eager.{k}" for k in scripted.eager.state_dict()}


def test_scripted_int8_follows_per_call_scales() -> None:
    """With dynamic inputs, scaling the input scales every layer's grid: a traced constant scale would not."""
    _, scripted, x, t = quantized("unet", "fbgemm", True, False, script=True)
    with torch.no_grad():
        small = scripted(x * 0.01, t)
        assert torch.equal(small, scripted.eager(x * 0.01, t))
        assert not torch.equal(small, scripted(x, t))


def test_scripted_int8_copies_without_its_graphs_and_traces_again() -> None:
    _, scripted, x, t = quantized("unet", "fbgemm", True, False, script=True)
    copied = copy.deepcopy(scripted)
    assert copied._graphs == {} and len(scripted._graphs) == 1
    with torch.no_grad():
        assert torch.equal(copied(x, t), scripted(x, t))
    assert len(copied._graphs) == 1


def test_plan_without_script_returns_the_eager_model() -> None:
    _, eager, _, _ = quantized("unet", "fbgemm", True, False, script=False)
    assert not isinstance(eager, ScriptedInt8) and hasattr(eager, "conv_in")


class Untraceable(nn.Module):
    """Returns a Python float: `torch.jit.trace` refuses such an output."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return float(x.sum() + t.sum())  # type: ignore[return-value]


def test_untraceable_model_runs_eagerly_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    scripted = ScriptedInt8(Untraceable())
    x, t = torch.ones(2, 3), torch.ones(2)
    with caplog.at_level(logging.WARNING, logger="diffquant"):
        assert scripted(x, t) == 8.0
        assert scripted(x * 2, t) == 14.0  # the same shape: no second attempt
    assert scripted.graph_for(x, t) is None
    assert sum("runs eagerly" in r.getMessage() for r in caplog.records) == 1


def test_calibration_cycled_batch_repeats_the_pairs_in_order() -> None:
    """The warm-up batch that scripted and compiled int8 models are traced / compiled at."""
    data = CalibrationData(torch.arange(3.0).view(3, 1, 1, 1), torch.tensor([10, 20, 30]))
    x, t = data.cycled(7)
    assert x.flatten().tolist() == [0, 1, 2, 0, 1, 2, 0] and t.tolist() == [10, 20, 30, 10, 20, 30, 10]
