"""backend=x86_inductor: PT2E + Inductor numerics against FP32, artefact size, and its error paths."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.pipeline import build_strategy
from diffquant.quant import pt2e
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import resolve_int8_numerics
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.size import state_dict_bytes
from helpers import calibration_context, machine_spec

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="the optional extra `inductor`")


@pytest.mark.heavy
@pytest.mark.slow
@needs_torchao
def test_tiny_unet_through_pt2e_and_inductor_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(64, 1, 8, 8, generator=gen), torch.randint(0, 1000, (64,), generator=gen)
    ctx = calibration_context(x, t, gen)
    out = pt2e.InductorPTQStrategy(QuantPlan(machine_spec("x86_inductor")), warmup_batch=16).quantize(model, ctx)
    assert out.execution == "int8_inductor" and out.compile_seconds > 0
    assert len(out.wrapped_layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    with torch.no_grad():
        sqnr = sqnr_db(model(x[:16], t[:16]), out.model(x[:16], t[:16]))
    assert sqnr > 20.0
    assert state_dict_bytes(out.model) < 0.45 * state_dict_bytes(model)  # int8 weights only, float copies dropped
    int8 = [p for p in out.model.state_dict().values() if p.dtype == torch.int8]
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sum(p.numel() for p in int8) == sum(m.weight.numel() for m in layers)  # every weight in int8, once


@pytest.mark.parametrize(
    ("plan", "needle"),
    [
        (QuantPlan(QuantSpec(weight_bits=4)), "quant.weight_bits=4 quant.act_bits=8"),
        (QuantPlan(QuantSpec(act_bits=6)), "quant.weight_bits=8 quant.act_bits=6"),
        (QuantPlan(QuantSpec(observer="percentile")), "quant.observer='percentile'"),
        (QuantPlan(QuantSpec(), split_shortcut=True), "quant.split_shortcut=True"),
        (QuantPlan(QuantSpec(), lowrank_rank=32), "quant.lowrank_rank=32"),
    ],
    ids=["w4", "a6", "percentile", "split", "lowrank"],
)
@needs_torchao
def test_unsupported_settings_fail_with_one_line(plan: QuantPlan, needle: str) -> None:
    with pytest.raises(DiffquantError, match="backend=x86_inductor") as err:
        pt2e.InductorPTQStrategy(plan)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_torchao_names_the_backend_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt2e.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DiffquantError, match=r"backend=x86_inductor needs torchao: pip install -e '\.\[inductor\]'"):
        pt2e.InductorPTQStrategy(QuantPlan(QuantSpec()))


@needs_torchao
def test_backend_selects_the_inductor_strategy_for_ptq_only(compose_cfg) -> None:
    cfg = to_config(compose_cfg("backend=x86_inductor"))
    assert isinstance(build_strategy(cfg, resolve_int8_numerics("x86_inductor", "auto")), pt2e.InductorPTQStrategy)
    with pytest.raises(DiffquantError, match="backend=x86_inductor supports quant=ptq only; got quant=qat"):
        build_strategy(to_config(compose_cfg("backend=x86_inductor", "quant=qat")), resolve_int8_numerics("x86", "auto"))


def test_the_pt2e_method_comes_from_the_quant_backend_specialization(compose_cfg) -> None:
    """conf/quant_backend/ptq_x86_inductor.yaml picks the method's `_target_`: no engine-name branch decides it."""
    assert compose_cfg("backend=x86_inductor").quant._target_ == "diffquant.quant.methods.ptq_pt2e"
    assert compose_cfg("backend=x86").quant._target_ == "diffquant.quant.methods.ptq"
    assert compose_cfg("backend=x86_inductor", "quant=fp32").quant._target_ == "diffquant.quant.methods.fp32"
    with pytest.raises(DiffquantError, match="ptq_pt2e needs backend=x86_inductor; got backend=fbgemm"):
        build_strategy(
            to_config(compose_cfg("quant._target_=diffquant.quant.methods.ptq_pt2e")), resolve_int8_numerics("fbgemm", "auto")
        )


@pytest.mark.heavy
@pytest.mark.slow
@needs_torchao
def test_skipped_layers_stay_float_in_the_quantized_graph() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    x, t = torch.randn(16, 1, 8, 8), torch.randint(0, 1000, (16,))
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    def quantize_nodes(skip: list[str]) -> tuple[int, torch.Tensor]:
        graph = pt2e.quantize_pt2e(model, CalibrationData(x, t), 16, machine_spec("x86_inductor"), skip)
        with torch.no_grad():
            return sum("quantize_per_tensor" in str(n.target) for n in graph.graph.nodes), graph(x, t)

    every, _ = quantize_nodes([])
    fewer, _ = quantize_nodes(["conv_in", "conv_out"])
    none, out = quantize_nodes(layers)
    assert every > fewer > none == 0
    with torch.no_grad():
        assert torch.allclose(out, model(x, t), atol=1e-5)
