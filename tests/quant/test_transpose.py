"""nn.ConvTranspose2d: fake quantization during calibration / QAT, int8 conversion, and the per-machine self-test."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from diffquant.metrics.quality import sqnr_db
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantPlan
from diffquant.quant.strategies import PTQStrategy
from diffquant.quant.transpose import FakeQuantConvTranspose2d, transposed_int8_is_exact
from helpers import calibration_context, machine_spec


class Upsampler(nn.Module):
    """conv -> ConvTranspose2d (kernel, stride) -> conv, `forward(x, t)` (t unused)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, kernel, stride=stride, padding=(kernel - stride) // 2)
        self.out = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.up(torch.relu(self.inp(x)))))


def quantized(engine: str, kernel: int, stride: int, simulate: bool = False):
    torch.manual_seed(0)
    model = Upsampler(kernel, stride).eval()
    x, t = torch.randn(32, 1, 8, 8), torch.zeros(32, dtype=torch.long)
    set_engine(engine)
    plan = QuantPlan(machine_spec(engine), simulate=simulate)
    return model, x, t, PTQStrategy(plan).quantize(model, calibration_context(x, t))


def test_the_fake_quant_module_quantizes_its_weight_per_tensor() -> None:
    _, _, _, out = quantized("fbgemm", 4, 2, simulate=True)
    layer = out.model.up.module
    assert isinstance(layer, FakeQuantConvTranspose2d) and out.execution == "fakequant"
    fq = layer.weight_fake_quant
    assert fq.qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric) and fq.scale.numel() == 1
    levels = torch.unique(fq(layer.weight) / fq.scale + fq.zero_point)
    assert levels.numel() <= fq.quant_max - fq.quant_min + 1
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-3)  # on the integer grid


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
@pytest.mark.parametrize(("kernel", "stride"), [(4, 2), (2, 2)])
def test_int8_transposed_convs_match_their_simulation_or_stay_float(engine, kernel, stride) -> None:
    model, x, t, real = quantized(engine, kernel, stride)
    *_, simulated = quantized(engine, kernel, stride, simulate=True)
    spec = machine_spec(engine)
    exact = transposed_int8_is_exact(engine, model.up, spec.weight_range(), spec.symmetric)
    assert ("up" in real.wrapped_layers) == exact and ("up" in real.float_layers) == (not exact)
    with torch.no_grad():
        ref, sim, got = model(x, t), simulated.model(x, t), real.model(x, t)
    assert sqnr_db(ref, sim) > 25
    assert sqnr_db(sim, got) > 30  # the int8 kernels compute what the simulation does (or the layer is float)


def test_the_self_test_passes_kernels_that_compute_and_fails_one_that_does_not(monkeypatch) -> None:
    layer = nn.ConvTranspose2d(8, 8, 2, stride=2)
    assert transposed_int8_is_exact("qnnpack", layer, (-128, 127), symmetric=True)
    assert transposed_int8_is_exact("fbgemm", nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), (-64, 63), symmetric=False)
    original = nnq.ConvTranspose2d.forward

    def off_by_two_steps(self, x):
        y = original(self, x)
        return torch.quantize_per_tensor(y.dequantize() + 2 * self.scale, self.scale, self.zero_point, torch.quint8)

    monkeypatch.setattr(nnq.ConvTranspose2d, "forward", off_by_two_steps)
    assert not transposed_int8_is_exact("qnnpack", layer, (-128, 127), symmetric=True)
