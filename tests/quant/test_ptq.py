"""Eager PTQ: module types after convert, numerics by SQNR, qconfig fields, skip patterns, fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.quantization import FakeQuantize, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.quant import engine as engine_mod
from diffquant.quant.calibration import CalibrationData, collect_trajectory, pick_indices
from diffquant.quant.engine import SCHEMES, require_exact, resolve_int8_numerics, set_engine, supported_engines
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from diffquant.quant.size import state_dict_bytes
from diffquant.quant.strategies import PTQStrategy
from diffquant.quant.wrap import fusable_groups
from helpers import machine_spec


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()


def context(x: torch.Tensor, t: torch.Tensor) -> QuantContext:
    d = GaussianDiffusion(linear_betas(1000))
    return QuantContext(
        calibration=lambda: CalibrationData(x, t),
        train_batches=lambda: iter([]),
        diffusion=d,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 1000, (32,), generator=gen)


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack", "x86"])
def test_w8a8_converts_to_int8_modules_with_high_sqnr(engine, inputs) -> None:
    set_engine(engine)
    model, (x, t) = tiny_unet(), inputs
    spec = machine_spec(engine)
    out = PTQStrategy(QuantPlan(spec)).quantize(model, context(x, t))
    assert out.execution == "int8"
    assert isinstance(out.model.conv_in.quant, nnq.Quantize)
    assert isinstance(out.model.conv_in.module, nnq.Conv2d)
    assert isinstance(out.model.conv_in.dequant, nnq.DeQuantize)
    assert isinstance(out.model.time_embed[0].module, nnq.Linear)
    assert out.model.conv_in.module.weight().qscheme() == torch.per_channel_affine
    assert all(type(m) is not nn.Conv2d for m in out.model.modules())  # every conv quantized
    with torch.no_grad():
        sqnr = sqnr_db(model(x, t), out.model(x, t))
    full_grids = not (spec.reduce_range or spec.reduce_weight_range)  # w8a8 where the self-test is exact
    assert sqnr > (25.0 if full_grids else 20.0)


def test_int8_artefact_of_the_default_unet_is_under_035_of_fp32() -> None:
    set_engine("fbgemm")
    model = UNet().eval()  # the unet_tiny default, 1.06 M parameters
    x, t = torch.randn(8, 1, 16, 16), torch.randint(0, 1000, (8,))
    out = PTQStrategy(QuantPlan(QuantSpec(observer="minmax"))).quantize(model, context(x, t))
    ratio = state_dict_bytes(out.model) / state_dict_bytes(model)
    assert 0.25 < ratio <= 0.35  # int8 weights: ~1/4 of fp32 plus scales, zero points and float norms


def test_sqnr_falls_with_bit_width(inputs) -> None:
    set_engine("fbgemm")
    model, (x, t) = tiny_unet(), inputs
    with torch.no_grad():
        ref = model(x, t)
        sqnr = {
            b: sqnr_db(
                ref, PTQStrategy(QuantPlan(machine_spec(weight_bits=b, act_bits=b))).quantize(model, context(x, t)).model(x, t)
            )
            for b in (8, 6, 4)
        }
    assert sqnr[8] > sqnr[6] + 6 > sqnr[4] + 12  # ~6 dB per bit (at 8 bits: the machine's exact 8-bit grids)
    assert sqnr[4] > 3.0


def test_fake_quant_matches_int8_kernels(inputs) -> None:
    """The simulation at 8 bits and the converted int8 model compute the same function.

    Min-max ranges: a clipping observer (histogram) would differ by design, since int8 kernels clamp
    to the full quint8 range while the simulation clamps to quant_max.
    """
    set_engine("fbgemm")
    model, (x, t) = tiny_unet(), inputs
    spec = machine_spec(observer="minmax")  # the grids this machine's int8 kernels compute exactly
    qmodel, _, _ = prepare_fake_quant(model, QuantPlan(spec), qat=False)
    calibrate(qmodel, context(x, t))
    with torch.no_grad():
        fake = qmodel.eval()(x, t)
        real = torch.ao.quantization.convert(qmodel)(x, t)
    assert sqnr_db(fake, real) > 30.0


def test_sub_8_bit_stays_fake_quantized(inputs) -> None:
    set_engine("fbgemm")
    out = PTQStrategy(QuantPlan(QuantSpec(weight_bits=4))).quantize(tiny_unet(), context(*inputs))
    assert out.execution == "fakequant"
    fq = out.model.conv_in.module.weight_fake_quant
    assert isinstance(fq, FakeQuantize) and (fq.quant_min, fq.quant_max) == (-8, 7)
    assert not bool(fq.observer_enabled) and bool(fq.fake_quant_enabled)


@pytest.mark.parametrize(
    ("spec", "act_range", "weight_range"),
    [
        (QuantSpec(), (0, 127), (-128, 127)),
        (QuantSpec(reduce_range=False), (0, 255), (-128, 127)),
        (QuantSpec(reduce_range=False, reduce_weight_range=True), (0, 255), (-64, 63)),
        (QuantSpec(weight_bits=6, reduce_range=False, reduce_weight_range=True), (0, 255), (-32, 31)),
        (QuantSpec(weight_bits=4, act_bits=6), (0, 63), (-8, 7)),
        (QuantSpec(weight_bits=2, act_bits=2), (0, 3), (-2, 1)),
    ],
    ids=["w8a8-reduce", "w8a8", "w7a8", "w6a8-guard-only-at-8-bits", "w4a6", "w2a2"],
)
def test_quant_ranges_by_bit_width(spec, act_range, weight_range) -> None:
    qc = make_qconfig(spec)
    act, weight = qc.activation(), qc.weight()
    assert (act.quant_min, act.quant_max) == act_range
    assert (weight.quant_min, weight.quant_max) == weight_range


@pytest.mark.parametrize(
    ("observer", "cls"),
    [("minmax", MinMaxObserver), ("moving_average", MovingAverageMinMaxObserver), ("histogram", HistogramObserver)],
)
def test_observer_choice(observer, cls) -> None:
    assert type(make_qconfig(QuantSpec(observer=observer)).activation().activation_post_process) is cls


def test_granularity_and_symmetry() -> None:
    assert make_qconfig(QuantSpec(granularity="per_tensor")).weight().qscheme == torch.per_tensor_affine
    assert make_qconfig(QuantSpec(symmetric=True)).weight().qscheme == torch.per_channel_symmetric
    with pytest.raises(DiffquantError, match="quant.weight_bits=9"):
        QuantSpec(weight_bits=9)


def test_skip_patterns_keep_layers_in_float(inputs) -> None:
    set_engine("fbgemm")
    out = PTQStrategy(QuantPlan(QuantSpec(), skip=("time_embed.*", "conv_out"))).quantize(tiny_unet(), context(*inputs))
    assert type(out.model.conv_out) is nn.Conv2d
    assert type(out.model.time_embed[0]) is nn.Linear
    assert isinstance(out.model.conv_in.module, nnq.Conv2d)
    assert "conv_out" not in out.wrapped_layers and "conv_in" in out.wrapped_layers
    with pytest.raises(DiffquantError, match="quant.skip"):
        PTQStrategy(QuantPlan(QuantSpec(), skip=("*",))).quantize(tiny_unet(), context(*inputs))


class ConvBnReLU(nn.Module):
    """A model with fusable Conv-BN-ReLU and Linear-ReLU patterns (the UNet has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.head = nn.Sequential(nn.Linear(64, 16), nn.ReLU())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h + self.head(h.flatten(1)).mean(1).view(-1, 1, 1, 1)


def test_fusion_of_conv_bn_relu(inputs) -> None:
    set_engine("fbgemm")
    model = ConvBnReLU().eval()
    assert fusable_groups(model) == [["features.0", "features.1", "features.2"], ["head.0", "head.1"]]
    x, t = inputs
    out = PTQStrategy(QuantPlan(QuantSpec())).quantize(model, context(x, t))
    assert type(out.model.features[0].module).__name__ == "ConvReLU2d"
    assert type(out.model.head[0].module).__name__ == "LinearReLU"
    with torch.no_grad():
        assert sqnr_db(model(x, t), out.model(x, t)) > 20.0


def test_engine_missing_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr("diffquant.quant.engine.supported_engines", lambda: ["qnnpack"])
    with pytest.raises(DiffquantError, match="backend.engine='fbgemm' is not available on this machine; available: qnnpack"):
        set_engine("fbgemm")


def test_calibration_pairs_follow_the_trajectory() -> None:
    assert pick_indices(50, 5) == {0, 12, 24, 37, 49}
    seen: list[int] = []

    def fake_sampler(noise: torch.Tensor, callback) -> torch.Tensor:
        for i, t in enumerate([90, 60, 30, 0]):
            callback(i, t, noise + i)
            seen.append(t)
        return noise

    data = collect_trajectory(fake_sampler, num_steps=4, keep_timesteps=2, noise=torch.zeros(3, 1, 2, 2))
    assert data.t.tolist() == [90] * 3 + [0] * 3
    assert data.x[3:].eq(3).all() and data.x[:3].eq(0).all()


def test_supported_engines() -> None:
    assert {"fbgemm", "qnnpack", "x86"} <= set(supported_engines())


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_auto_scheme_is_the_first_exact_one_on_this_machine(engine) -> None:
    """The self-test itself: every scheme it calls exact computes an int8 conv exactly, on this CPU."""
    numerics = resolve_int8_numerics(engine, "auto")
    assert numerics.exact and engine_mod.scheme_is_exact(engine, numerics.scheme)
    earlier = list(SCHEMES)[: list(SCHEMES).index(numerics.scheme.name)]
    assert not any(engine_mod.scheme_is_exact(engine, SCHEMES[name]) for name in earlier)
    assert engine_mod.scheme_is_exact(engine, SCHEMES["w7a8"])  # 255 x 64 x 2 < 2**15: exact on every CPU


@pytest.mark.parametrize(
    ("exact", "expected"),
    [({"w8a8", "w7a8", "w8a7"}, "w8a8"), ({"w7a8", "w8a7"}, "w7a8"), ({"w8a7"}, "w8a7")],
    ids=["vnni", "avx2", "only-7-bit-activations"],
)
def test_auto_scheme_follows_the_self_test(monkeypatch, exact, expected) -> None:
    """Both outcomes of the self-test, whatever this machine is: int32 accumulation (VNNI) and saturating AVX2."""
    monkeypatch.setattr(engine_mod, "scheme_is_exact", lambda engine, scheme: scheme.name in exact)
    numerics = resolve_int8_numerics("fbgemm", "auto")
    assert (numerics.scheme.name, numerics.exact) == (expected, True)
    assert numerics.as_dict()["reduce_range"] is (expected == "w8a7")
    assert numerics.as_dict()["reduce_weight_range"] is (expected == "w7a8")
    named = resolve_int8_numerics("fbgemm", "w8a8")  # a named scheme is kept, and marked when it saturates
    assert (named.scheme.name, named.exact) == ("w8a8", "w8a8" in exact)


def test_a_saturating_scheme_is_refused_with_one_line(monkeypatch) -> None:
    monkeypatch.setattr(engine_mod, "scheme_is_exact", lambda engine, scheme: scheme.name != "w8a8")
    numerics = resolve_int8_numerics("fbgemm", "w8a8")
    with pytest.raises(DiffquantError, match=r"backend.int8_scheme=w8a8: fbgemm's int8 kernels saturate") as err:
        require_exact(numerics, "w8a8")
    assert "w7a8, w8a7" in str(err.value) and "\n" not in str(err.value)
    require_exact(resolve_int8_numerics("fbgemm", "auto"), "auto")  # the exact scheme passes
    with pytest.raises(DiffquantError, match="backend.int8_scheme"):
        resolve_int8_numerics("fbgemm", "w9a9")


def test_simulate_keeps_fake_quantization_and_lifts_the_refusal(monkeypatch, compose_cfg) -> None:
    """quant.simulate=true: a W8A8 plan stays fake-quantized, so a scheme that saturates here is not refused."""
    from diffquant.config import to_config
    from diffquant.pipeline import build_strategy

    monkeypatch.setattr(engine_mod, "scheme_is_exact", lambda engine, scheme: scheme.name != "w8a8")
    numerics = resolve_int8_numerics("fbgemm", "w8a8")
    with pytest.raises(DiffquantError, match="backend.int8_scheme=w8a8"):
        build_strategy(to_config(compose_cfg("backend.int8_scheme=w8a8")), numerics)
    strategy = build_strategy(to_config(compose_cfg("backend.int8_scheme=w8a8", "quant.simulate=true")), numerics)
    assert strategy.plan.simulate and not strategy.plan.runs_int8
    assert strategy.plan.spec.weight_range() == (-128, 127)  # the full 8-bit grid is what gets simulated
    with pytest.raises(DiffquantError, match="quant.simulate=true needs an eager engine"):
        build_strategy(to_config(compose_cfg("backend=x86_inductor", "quant.simulate=true")), numerics)
