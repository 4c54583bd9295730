"""Issue-3 options: percentile / float activations, per-layer bits, split shortcut, AdaRound, BRECQ, sensitivity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, NoopObserver

from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.quant.calibration import CalibrationData, pick_indices_normal
from diffquant.quant.engine import set_engine
from diffquant.quant.observers import PercentileObserver
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from diffquant.quant.reconstruction import ReconSettings, reconstruct, units_for
from diffquant.quant.split import SplitFakeQuantize
from diffquant.quant.strategies import PTQStrategy
from helpers import machine_spec


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()


def context(n: int = 32) -> QuantContext:
    gen = torch.Generator().manual_seed(1)
    data = CalibrationData(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 1000, (n,), generator=gen))
    return QuantContext(
        calibration=lambda: data,
        train_batches=lambda: iter([]),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        generator=gen,
        progress=False,
    )


def test_percentile_observer_clips_outliers() -> None:
    obs = PercentileObserver(percentile=99.0)
    x = torch.linspace(0, 1, 10001)
    x[-1] = 1000.0
    obs(x)
    assert obs.max_val.item() == pytest.approx(0.99, abs=2e-3)
    assert obs.min_val.item() == pytest.approx(0.01, abs=2e-3)
    fq = make_qconfig(QuantSpec(observer="percentile", percentile=99.5)).activation()
    assert isinstance(fq.activation_post_process, PercentileObserver) and fq.activation_post_process.percentile == 99.5


def test_float_activations_quantize_weights_only() -> None:
    qc = make_qconfig(QuantSpec(weight_bits=4, act_bits=None))
    assert isinstance(qc.activation(), NoopObserver)
    set_engine("fbgemm")
    out = PTQStrategy(QuantPlan(QuantSpec(weight_bits=4, act_bits=None))).quantize(tiny_unet(), context())
    assert out.execution == "fakequant"
    assert isinstance(out.model.conv_in.quant.activation_post_process, NoopObserver)
    assert out.model.conv_in.module.weight_fake_quant.quant_max == 7


def test_layer_bits_are_honoured_and_block_int8() -> None:
    set_engine("fbgemm")
    plan = QuantPlan(QuantSpec(), layer_bits=(("down.*", 4), ("conv_out", 6)))
    assert not plan.runs_int8
    out = PTQStrategy(plan).quantize(tiny_unet(), context())
    assert out.execution == "fakequant"
    bits = lambda name: out.model.get_submodule(name).module.weight_fake_quant.quant_max  # noqa: E731
    assert (bits("down.0.0.conv1"), bits("conv_out"), bits("conv_in"), bits("up.0.0.conv1")) == (7, 31, 127, 127)


def test_split_shortcut_gives_the_skip_half_its_own_range() -> None:
    set_engine("fbgemm")
    model = tiny_unet()
    splits = model.concat_splits()
    assert splits["up.0.0.conv1"] == 32 and "up.0.0.shortcut" in splits
    qmodel, wrapped, _ = prepare_fake_quant(model, QuantPlan(QuantSpec(), split_shortcut=True), qat=False)
    calibrate(qmodel, context())
    split = qmodel.get_submodule("up.0.0.shortcut").quant.activation_post_process
    assert isinstance(split, SplitFakeQuantize) and split.split == 32
    assert isinstance(split.first, FakeQuantize) and isinstance(split.second, FakeQuantize)
    assert not torch.allclose(split.first.scale, split.second.scale)
    assert not QuantPlan(QuantSpec(), split_shortcut=True).runs_int8


def test_adaround_beats_nearest_rounding_on_a_toy_layer() -> None:
    """A 4-bit conv whose inputs are correlated: learned rounding lowers the output error."""
    set_engine("fbgemm")
    torch.manual_seed(0)

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = Toy().eval()
    base = torch.randn(64, 1, 8, 8)
    data = CalibrationData(base.repeat(1, 8, 1, 1) + 0.3 * torch.randn(64, 8, 8, 8), torch.zeros(64, dtype=torch.long))
    ctx = QuantContext(
        calibration=lambda: data,
        train_batches=lambda: iter([]),
        diffusion=GaussianDiffusion(linear_betas(10)),
        generator=torch.Generator(),
        progress=False,
    )
    spec = QuantSpec(weight_bits=4, act_bits=None, observer="minmax")
    qmodel, wrapped, _ = prepare_fake_quant(model, QuantPlan(spec), qat=False)
    calibrate(qmodel, ctx)
    with torch.no_grad():
        ref = model(data.x, data.t)
        nearest = nn.functional.mse_loss(qmodel(data.x, data.t), ref).item()
    before = qmodel.conv.module.weight.clone()
    reconstruct(qmodel, model, wrapped, data, ReconSettings(iters=400, lr=1e-2, batch_size=32))
    with torch.no_grad():
        learned = nn.functional.mse_loss(qmodel(data.x, data.t), ref).item()
    assert learned < 0.8 * nearest
    fq = qmodel.conv.module.weight_fake_quant  # the learned weights sit exactly on the 4-bit grid
    torch.testing.assert_close(fq(qmodel.conv.module.weight), qmodel.conv.module.weight)
    scale = fq.scale.view(-1, 1, 1, 1)
    assert ((qmodel.conv.module.weight - before).abs() <= scale + 1e-6).all()  # at most one step from W


def test_brecq_units_are_blocks_and_loose_layers() -> None:
    qmodel, wrapped, _ = prepare_fake_quant(tiny_unet(), QuantPlan(QuantSpec()), qat=False)
    units = units_for(qmodel, wrapped, ReconSettings(method="brecq"))
    assert "down.0.0" in units and "mid.1" in units and "conv_in" in units and "time_embed.0" in units
    assert not any(u.startswith("down.0.0.") for u in units)
    assert units_for(qmodel, wrapped, ReconSettings(method="adaround")) == wrapped


@pytest.mark.slow
def test_brecq_and_sensitivity_through_the_strategy() -> None:
    set_engine("fbgemm")
    model = tiny_unet()
    recon = ReconSettings(method="brecq", iters=20, batch_size=16)
    out = PTQStrategy(QuantPlan(QuantSpec(weight_bits=4)), recon=recon, recon_samples=32, sensitivity=True).quantize(
        model, context()
    )
    assert set(out.recon_loss) >= {"down.0.0", "conv_out"}
    assert all(math.isfinite(v) for v in out.recon_loss.values())
    assert [r["layer"] for r in out.sensitivity] == out.wrapped_layers
    row = out.sensitivity[0]
    assert set(row) == {"layer", "type", "weight_bits", "sqnr_isolated_db", "sqnr_accumulated_db"}
    assert row["weight_bits"] == 4 and 0 < row["sqnr_isolated_db"] < 60


def test_normal_timestep_sampling_prefers_the_mean() -> None:
    steps = list(range(980, -1, -20))  # DDIM 50 over T = 1000
    chosen = pick_indices_normal(steps, keep=10, mean=0.4, std=0.1, num_timesteps=1000, seed=0)
    ts = sorted(steps[i] for i in chosen)
    assert len(ts) == 10
    assert 250 <= sum(ts) / len(ts) <= 550  # centred near 0.4 T, unlike the uniform spread's 490
    assert max(ts) - min(ts) < 600


def test_dynamic_inputs_scale_per_call_in_fake_and_int8_paths() -> None:
    from diffquant.quant.dynamic import DynamicFakeQuantize, DynamicQuantize

    set_engine("fbgemm")
    model, ctx = tiny_unet(), context()
    plan = QuantPlan(machine_spec(observer="minmax"), dynamic_input=True)
    qmodel, wrapped, _ = prepare_fake_quant(model, plan, qat=False)
    calibrate(qmodel, ctx)
    assert isinstance(qmodel.conv_in.quant.activation_post_process, DynamicFakeQuantize)
    small, large = 0.05 * torch.randn(4, 1, 8, 8), 4 * torch.randn(4, 1, 8, 8)
    step = lambda x: float(qmodel.conv_in.quant(x).unique().diff().min())  # noqa: E731 - grid step seen
    assert step(small) < step(large) / 20
    t = torch.full((4,), 10)
    with torch.no_grad():
        fake = qmodel.eval()(small, t)
        out = PTQStrategy(plan).quantize(model, ctx)
        assert out.execution == "int8" and isinstance(out.model.conv_in.quant, DynamicQuantize)
        real = out.model(small, t)
    assert sqnr_db(fake, real) > 30.0
