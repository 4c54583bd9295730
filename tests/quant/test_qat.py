"""QAT: fake-quant modules after prepare, the loss falls, observers freeze, 8-bit converts to int8."""
from __future__ import annotations

import torch
from torch.ao.nn import qat as nnqat
from torch.ao.nn import quantized as nnq

from diffquant.data.datasets import iterate_batches, load_dataset
from diffquant.diffusion.schedule import GaussianDiffusion, make_betas
from diffquant.models.unet import UNet
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import set_engine
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant import strategies
from diffquant.quant.strategies import QATStrategy, QuantContext, QuantPlan, prepare_fake_quant
from diffquant.training import TrainSettings


def test_prepare_inserts_fake_quant_modules() -> None:
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    qmodel, wrapped, _ = prepare_fake_quant(model, QuantPlan(QuantSpec()), qat=True)
    assert isinstance(qmodel.conv_in.module, nnqat.Conv2d)
    assert isinstance(qmodel.time_embed[0].module, nnqat.Linear)
    assert len(wrapped) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert type(model.conv_in) is torch.nn.Conv2d  # the FP32 model is untouched


def test_qat_loss_falls_observers_freeze_and_convert() -> None:
    set_engine("fbgemm")
    data = load_dataset("digits", root=None, image_size=8, channels=1)
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    d = GaussianDiffusion(make_betas("linear", 1000))
    gen = torch.Generator().manual_seed(0)
    losses: list[float] = []
    ctx = QuantContext(
        calibration=lambda: CalibrationData(data.train_images[:32], torch.randint(0, 1000, (32,), generator=gen)),
        train_batches=lambda: iterate_batches(data.train_images, 64, torch.Generator().manual_seed(1)),
        diffusion=d, generator=gen, progress=False,
        log_scalar=lambda tag, v, step: losses.append(v) if tag == "qat/loss" else None,
    )
    strategy = QATStrategy(QuantPlan(QuantSpec(observer="moving_average")), TrainSettings(steps=60, lr=3e-3, log_every=1),
                           freeze_observer_step=30)
    out = strategy.quantize(model, ctx)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert out.execution == "int8"
    assert isinstance(out.model.conv_in.module, nnq.Conv2d)


def test_observers_frozen_after_configured_step(monkeypatch) -> None:
    set_engine("fbgemm")
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    states: list[bool] = []
    real_train = strategies.train_diffusion

    def spying_train(qmodel, *args, on_step, **kwargs):  # records the observer flag at each training step
        def hook(step: int) -> None:
            on_step(step)
            states.append(bool(qmodel.conv_in.quant.activation_post_process.observer_enabled))

        return real_train(qmodel, *args, on_step=hook, **kwargs)

    monkeypatch.setattr(strategies, "train_diffusion", spying_train)
    ctx = QuantContext(calibration=lambda: CalibrationData(x, torch.zeros(16, dtype=torch.long)),
                       train_batches=lambda: iter([x] * 10), diffusion=GaussianDiffusion(make_betas("linear", 1000)),
                       generator=torch.Generator().manual_seed(0), progress=False)
    out = QATStrategy(QuantPlan(QuantSpec(weight_bits=4)), TrainSettings(steps=6, lr=1e-3), freeze_observer_step=3).quantize(model, ctx)
    assert states == [True, True, True, False, False, False]
    assert out.execution == "fakequant"
