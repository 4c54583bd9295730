"""QAT: fake-quant modules after prepare, the loss falls, observers freeze, 8-bit converts to int8."""

from __future__ import annotations

import pytest
import torch
from torch.ao.nn import qat as nnqat
from torch.ao.nn import quantized as nnq

from diffquant.data.datasets import iterate_batches, load_digits
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.models.unet import UNet
from diffquant.quant import strategies
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import QATStrategy
from diffquant.training.loop import TrainSettings


def test_prepare_inserts_fake_quant_modules() -> None:
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    qmodel, wrapped, _ = prepare_fake_quant(model, QuantPlan(QuantSpec()), qat=True)
    assert isinstance(qmodel.conv_in.module, nnqat.Conv2d)
    assert isinstance(qmodel.time_embed[0].module, nnqat.Linear)
    assert len(wrapped) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert type(model.conv_in) is torch.nn.Conv2d  # the FP32 model is untouched


@pytest.mark.slow
def test_qat_loss_falls_observers_freeze_and_convert() -> None:
    set_engine("fbgemm")
    data = load_digits(image_size=8, channels=1, holdout_fraction=0.1)
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    d = GaussianDiffusion(linear_betas(1000))
    gen = torch.Generator().manual_seed(0)
    losses: list[float] = []
    ctx = QuantContext(
        calibration=lambda: CalibrationData(data.train_images[:32], torch.randint(0, 1000, (32,), generator=gen)),
        train_batches=lambda: iterate_batches(data.train_images, 64, torch.Generator().manual_seed(1)),
        diffusion=d,
        generator=gen,
        progress=False,
        log_scalar=lambda tag, v, step: losses.append(v) if tag == "qat/loss" else None,
    )
    strategy = QATStrategy(
        QuantPlan(QuantSpec(observer="moving_average")),
        TrainSettings(steps=60, lr=3e-3, log_every=1),
        freeze_observer_step=30,
        distill_weight=0.0,
    )  # the teacher here is untrained
    out = strategy.quantize(model, ctx)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert out.execution == "int8"
    assert isinstance(out.model.conv_in.module, nnq.Conv2d)


@pytest.mark.slow
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
    ctx = QuantContext(
        calibration=lambda: CalibrationData(x, torch.zeros(16, dtype=torch.long)),
        train_batches=lambda: iter([x] * 10),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    out = QATStrategy(QuantPlan(QuantSpec(weight_bits=4)), TrainSettings(steps=6, lr=1e-3), freeze_observer_step=3).quantize(
        model, ctx
    )
    assert states == [True, True, True, False, False, False]
    assert out.execution == "fakequant"


def test_distillation_loss_is_zero_when_student_equals_teacher() -> None:
    from diffquant.training.loop import distillation_loss, trajectory_distillation_loss

    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8).eval()
    d = GaussianDiffusion(linear_betas(1000))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    distill_only = distillation_loss(model, d, torch.Generator().manual_seed(0), data_weight=0.0, distill_weight=1.0)
    assert distill_only(model, x0).item() == 0.0
    with_data = distillation_loss(model, d, torch.Generator().manual_seed(0), data_weight=1.0, distill_weight=1.0)
    assert with_data(model, x0).item() > 0.1  # an untrained model does not predict the noise
    pairs = (torch.randn(4, 1, 8, 8), torch.tensor([1, 10, 100, 999]))
    assert trajectory_distillation_loss(model)(model, pairs).item() == 0.0
    other = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8).eval()
    assert trajectory_distillation_loss(model)(other, pairs).item() > 0.0


@pytest.mark.slow
def test_data_free_qat_trains_on_trajectory_pairs() -> None:
    set_engine("fbgemm")
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8).eval()
    pairs = CalibrationData(torch.randn(64, 1, 8, 8), torch.randint(0, 1000, (64,)))
    losses: list[float] = []
    ctx = QuantContext(
        calibration=lambda: pairs,
        train_batches=lambda: iter(()),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        generator=torch.Generator().manual_seed(0),
        progress=False,
        log_scalar=lambda tag, v, step: losses.append(v) if tag == "qat/loss" else None,
    )
    out = QATStrategy(
        QuantPlan(QuantSpec(weight_bits=4, act_bits=4)),
        TrainSettings(steps=40, lr=2e-3, log_every=1),
        freeze_observer_step=20,
        data_free=True,
        batch_size=32,
    ).quantize(model, ctx)
    assert out.execution == "fakequant" and len(losses) == 40
    assert sum(losses[-5:]) < sum(losses[:5])  # the student moves towards the teacher


def test_cosine_schedule_decays_to_zero() -> None:
    from diffquant.training.loop import lr_factor

    s = TrainSettings(steps=110, lr=1.0, schedule="cosine")
    assert [round(lr_factor(i, 10, s), 3) for i in (0, 9, 10, 60, 110)] == [0.1, 1.0, 1.0, 0.5, 0.0]
    assert lr_factor(60, 10, TrainSettings(steps=110, lr=1.0)) == 1.0
