"""QAT with learned step sizes, and a QAT run that resumes from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.ao.nn import quantized as nnq
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

from diffquant.data.datasets import iterate_batches
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.models.unet import UNet
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.engine import set_engine
from diffquant.quant.lsq import learned_scales, step_size_param_groups, to_learnable, use_learned_step_sizes
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import QATStrategy
from diffquant.training.loop import TrainSettings

IMAGES = torch.rand(64, 1, 8, 8) * 2 - 1


def tiny() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)


def context(state_path: Path | None = None, stop_at: int | None = None) -> QuantContext:
    """Fresh, seeded generators each call, as a new process would have."""
    batch_gen = torch.Generator().manual_seed(1)

    def log(tag: str, value: float, step: int) -> None:
        if tag == "qat/loss":
            seen.append(step)
            if step == stop_at:
                raise KeyboardInterrupt  # stands in for a kill after this step's checkpoint check

    seen: list[int] = []
    ctx = QuantContext(
        calibration=lambda: CalibrationData(IMAGES[:32], torch.arange(32) * 30),
        diffusion=GaussianDiffusion(linear_betas(1000)),
        train_batches=lambda: iterate_batches(IMAGES, 16, batch_gen),
        generator=torch.Generator().manual_seed(2),
        progress=False,
        log_scalar=log,
        batch_generator=batch_gen,
        state_path=state_path,
        state_key="k",
        checkpoint_every=3,
    )
    ctx.seen = seen  # type: ignore[attr-defined]
    return ctx


def test_learnable_quantizer_starts_at_the_calibrated_grid() -> None:
    qmodel, _, _ = prepare_fake_quant(tiny(), QuantPlan(QuantSpec(weight_bits=4, observer="minmax")), qat=True)
    calibrate(qmodel, context())
    fq = qmodel.conv_in.module.weight_fake_quant
    w = qmodel.conv_in.module.weight.detach()
    expected = fq(w)
    learnable = to_learnable(fq)
    torch.testing.assert_close(learnable(w), expected, rtol=0, atol=1e-6)
    assert learnable.scale.requires_grad and learnable.scale.shape == (w.shape[0],)


def test_lsq_swaps_quantizers_and_groups_their_learning_rate() -> None:
    qmodel, _, _ = prepare_fake_quant(tiny(), QuantPlan(QuantSpec(weight_bits=4)), qat=True)
    calibrate(qmodel, context())
    swapped = use_learned_step_sizes(qmodel)
    assert swapped == sum(isinstance(m, _LearnableFakeQuantize) for m in qmodel.modules()) > 0
    groups = step_size_param_groups(qmodel, lr=1e-3, factor=0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert len(groups[1]["params"]) == 2 * swapped


@pytest.mark.slow
def test_lsq_qat_learns_step_sizes_and_converts_to_int8() -> None:
    set_engine("fbgemm")
    strategy = QATStrategy(
        QuantPlan(QuantSpec()),
        TrainSettings(steps=8, lr=1e-3, log_every=1),
        freeze_observer_step=2,
        distill_weight=0.0,
        lsq=True,
        lsq_lr_factor=1.0,
    )
    qmodel, _, _ = prepare_fake_quant(tiny(), strategy.plan, qat=True)
    calibrate(qmodel, context())
    use_learned_step_sizes(qmodel)
    before = learned_scales(qmodel)
    out = strategy.quantize(tiny(), context())
    assert out.execution == "int8" and isinstance(out.model.conv_in.module, nnq.Conv2d)
    after = out.model.conv_in.module.weight().q_per_channel_scales().float()
    assert not torch.allclose(after, before["conv_in.module.weight_fake_quant"].double().float())


@pytest.mark.slow
def test_interrupted_qat_resumes_from_its_step(tmp_path: Path) -> None:
    set_engine("fbgemm")
    strategy = QATStrategy(
        QuantPlan(QuantSpec(weight_bits=4)), TrainSettings(steps=8, lr=1e-3, log_every=1), freeze_observer_step=4, lsq=True
    )
    reference = strategy.quantize(tiny(), context())
    path = tmp_path / "qat_state.pt"
    with pytest.raises(KeyboardInterrupt):
        strategy.quantize(tiny(), context(path, stop_at=4))  # checkpoint after 3 steps; steps 3 and 4 lost
    assert torch.load(path, weights_only=False)["step"] == 3
    ctx = context(path)
    resumed = strategy.quantize(tiny(), ctx)
    assert ctx.seen == [3, 4, 5, 6, 7]  # continued from its step, not from 0
    x, t = IMAGES[:4], torch.tensor([10, 200, 500, 900])
    torch.testing.assert_close(resumed.model(x, t), reference.model(x, t), rtol=0, atol=0)
    assert torch.load(path, weights_only=False)["step"] == 8  # the finished state is kept: a re-run skips training
    again = context(path)
    strategy.quantize(tiny(), again)
    assert again.seen == []
