"""Empirical bias correction: per-channel output means move to FP32's, the model gets closer, int8 keeps the bias."""

from __future__ import annotations

import torch

from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.quant.bias_correction import channel_means, correct_bias
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import machine_spec


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()


def pairs(n: int = 64, seed: int = 1) -> CalibrationData:
    gen = torch.Generator().manual_seed(seed)
    return CalibrationData(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 1000, (n,), generator=gen))


def context(data: CalibrationData) -> QuantContext:
    return QuantContext(
        calibration=lambda: data,
        train_batches=lambda: iter([]),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        generator=torch.Generator(),
        progress=False,
    )


def test_correction_moves_channel_means_to_fp32_and_brings_the_model_closer() -> None:
    model, data = tiny_unet(), pairs()
    plan = QuantPlan(QuantSpec(weight_bits=4, act_bits=8))  # 4-bit weights: a large, systematic rounding error
    qmodel, wrapped, fused = prepare_fake_quant(model, plan, qat=False)
    calibrate(qmodel, context(data))
    qmodel.eval()
    x, t = pairs(32, seed=2).cycled(32)  # held-out pairs: the correction must generalize beyond its own data
    with torch.no_grad():
        ref, before = model(x, t), qmodel(x, t)
    last_of = {g[0]: g[-1] for g in fused}
    fp_means = channel_means(model, {n: last_of.get(n, n) for n in wrapped}, data, 32)
    gap_before = sum(
        float((fp_means[n] - m).abs().mean()) for n, m in channel_means(qmodel, {n: n for n in wrapped}, data, 32).items()
    )
    shifts = correct_bias(qmodel, model, wrapped, fused, data, rounds=3, batch_size=32)
    gap_after = sum(
        float((fp_means[n] - m).abs().mean()) for n, m in channel_means(qmodel, {n: n for n in wrapped}, data, 32).items()
    )
    with torch.no_grad():
        after = qmodel(x, t)
    assert len(shifts) == 3 and shifts[0] > 0 and shifts[-1] < shifts[0]
    assert gap_after < 0.5 * gap_before
    assert sqnr_db(ref, after) > sqnr_db(ref, before)


def test_corrected_bias_survives_conversion_to_int8() -> None:
    set_engine("fbgemm")
    data = pairs()
    plain = PTQStrategy(QuantPlan(machine_spec("fbgemm"))).quantize(tiny_unet(), context(data))
    corrected = PTQStrategy(QuantPlan(machine_spec("fbgemm")), bias_rounds=2).quantize(tiny_unet(), context(data))
    assert corrected.execution == plain.execution == "int8"
    x, t = pairs(16, seed=3).cycled(16)
    with torch.no_grad():
        ref = tiny_unet()(x, t)
        assert sqnr_db(ref, corrected.model(x, t)) > sqnr_db(ref, plain.model(x, t)) - 0.5

    def conv_bias(outcome):
        module = outcome.model
        module = getattr(module, "eager", module)  # ScriptedInt8 keeps the eager model
        return module.get_submodule("conv_in").module.bias()

    assert not torch.allclose(conv_bias(corrected), conv_bias(plain))
