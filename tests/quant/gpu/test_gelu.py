"""The sigmoid form of GELU's tanh approximation: the same function, swapped in only where models compile."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffquant.models.dit import DiT
from diffquant.quant.config import BackendConfig
from diffquant.quant.gpu.gelu import SigmoidGelu, sigmoid_gelus
from diffquant.quant.gpu.runtime import Compiling, LowBitModel


def test_sigmoid_form_equals_the_tanh_approximation_in_float64() -> None:
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    torch.testing.assert_close(SigmoidGelu()(x), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(SigmoidGelu()(x32), F.gelu(x32, approximate="tanh"), rtol=2e-6, atol=1e-6)


def test_only_tanh_form_gelus_are_replaced() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Sequential(nn.GELU(), nn.GELU("tanh")))
    assert sigmoid_gelus(model) == 2
    assert [type(m).__name__ for m in (model[1], model[2][0], model[2][1])] == ["SigmoidGelu", "GELU", "SigmoidGelu"]


def test_compiling_swaps_in_sigmoid_gelus_and_keeps_the_output_an_eager_model_keeps_its_own(monkeypatch) -> None:
    torch.manual_seed(0)
    dit = DiT(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
    eager = LowBitModel(dit, "bf16_gpu", Compiling(enabled=False))
    with torch.no_grad():
        ref = eager(x, t)
    assert sum(isinstance(m, nn.GELU) for m in dit.modules()) == 2  # not compiled: nothing replaced
    monkeypatch.setattr(torch, "compile", lambda model, **_: model)  # no CPU compile here: the swap is what is tested
    with torch.no_grad():
        out = LowBitModel(dit, "bf16_gpu", Compiling(enabled=True, sigmoid_gelu=True))(x, t)
    assert sum(isinstance(m, SigmoidGelu) for m in dit.modules()) == 2 and not any(isinstance(m, nn.GELU) for m in dit.modules())
    torch.testing.assert_close(out, ref, rtol=0.0, atol=0.02)  # bf16 arithmetic either way
    plain = DiT(1, 8, 2, 32, 2, 2).eval()
    with torch.no_grad():
        LowBitModel(plain, "bf16_gpu", Compiling(enabled=True, sigmoid_gelu=False))(x, t)  # off: GELU compiles as it is
    assert not any(isinstance(m, SigmoidGelu) for m in plain.modules())


def test_backend_setting_reaches_compiling_and_only_gpu_cache_keys() -> None:
    assert Compiling().sigmoid_gelu and BackendConfig(engine="cuda_fp8").compiling().sigmoid_gelu  # on by default
    off = BackendConfig(engine="cuda_fp8", sigmoid_gelu=False)
    assert not off.compiling().sigmoid_gelu
    assert off.key()["sigmoid_gelu"] is False and BackendConfig(engine="cuda_fp8").key()["sigmoid_gelu"] is True
    assert "sigmoid_gelu" not in BackendConfig(engine="fbgemm").key()  # a CPU engine's cached results keep their key
