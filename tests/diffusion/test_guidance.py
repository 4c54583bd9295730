"""Classifier-free guidance: batched halves equal two separate passes, conditions drop at their rate, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffquant.diffusion.guidance import Guide, drop_conditions, guide_for
from diffquant.diffusion.samplers import ddim_sample
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.errors import DiffquantError
from diffquant.models.dit import DiT
from diffquant.models.unet import UNet
from diffquant.quant.calibration import Conditions, collect_trajectory
from diffquant.training.loop import conditional_epsilon_loss, distillation_loss


def cond_unet() -> UNet:
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8, num_classes=5).eval()
    with torch.no_grad():  # a non-trivial class embedding (nn.Embedding starts at N(0, 1) anyway)
        model.label_embed.weight.mul_(2.0)
    return model


class Recorder(nn.Module):
    """Wraps a model and records every call's inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []
        self.num_classes = getattr(model, "num_classes", 0)

    def forward(self, *args: Tensor) -> Tensor:
        self.calls.append(tuple(a.clone() for a in args))
        return self.model(*args)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_the_batched_guided_call_equals_separate_conditional_and_unconditional_passes(scale: float) -> None:
    model = cond_unet()
    guide = guide_for(model, scale)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 500, 900]), torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        eps_c, eps_u = model(x, t, y), model(x, t, torch.full((4,), 5))
        guided = guide.bind(model, y)(x, t)
    torch.testing.assert_close(guided, eps_u + scale * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
    recorder = Recorder(model)
    with torch.no_grad():
        guide.bind(recorder, y)(x, t)
    (call,) = recorder.calls  # one model call per step, both halves in it
    assert call[0].shape[0] == (4 if scale == 1.0 else 8)
    if scale != 1.0:
        assert torch.equal(call[2], torch.tensor([0, 1, 2, 4, 5, 5, 5, 5]))


def test_no_label_is_the_null_class_and_labels_change_the_prediction() -> None:
    for model in (cond_unet(), DiT(image_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=5).eval()):
        with torch.no_grad():  # past DiT's adaLN-Zero init, whose output is 0 whatever the label
            for p in model.parameters():
                p.normal_(0, 0.2)
        x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 500])
        with torch.no_grad():
            torch.testing.assert_close(model(x, t), model(x, t, torch.full((3,), 5)), rtol=0, atol=0)
            assert (model(x, t, torch.tensor([0, 1, 2])) - model(x, t, torch.tensor([3, 4, 0]))).abs().max() > 1e-3


def test_guidance_scale_zero_samples_the_unconditional_model() -> None:
    model, diffusion = cond_unet(), GaussianDiffusion(linear_betas(100))
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    guided = ddim_sample(guide_for(model, 0.0).bind(model, torch.tensor([0, 1, 2])), diffusion, noise, steps=5)
    plain = ddim_sample(model, diffusion, noise, steps=5)
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


def test_calibration_pairs_are_the_guided_models_actual_inputs() -> None:
    model, diffusion = Recorder(cond_unet()), GaussianDiffusion(linear_betas(100))
    guide = guide_for(model, 2.0)
    labels = torch.tensor([3, 1, 4])
    noise = torch.randn(3, 1, 8, 8)
    data = collect_trajectory(
        lambda m, **kw: ddim_sample(m, diffusion, steps=5, **kw),
        5,
        2,
        noise,
        keep={0, 4},
        conditions=Conditions(model, guide, labels),
    )
    assert data.guidance_scale == 2.0 and len(data) == 2 * 2 * 3  # 2 steps x both halves x 3 trajectories
    kept = [model.calls[0], model.calls[4]]
    for i, call in enumerate(kept):
        rows = slice(6 * i, 6 * (i + 1))
        for got, want in zip(data.rows(rows), call):
            assert torch.equal(got, want)
    assert torch.equal(data.cond[:6], torch.tensor([3, 1, 4, 5, 5, 5]))


def test_conditions_drop_to_the_null_class_at_their_rate() -> None:
    guide = Guide(torch.tensor(10), 1.0, 10)
    labels = torch.arange(20000) % 10
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(drop_conditions(labels, guide, 0.0, generator), labels)
    assert bool((drop_conditions(labels, guide, 1.0, generator) == 10).all())
    dropped = drop_conditions(labels, guide, 0.25, generator)
    share = float((dropped == 10).double().mean())
    assert abs(share - 0.25) < 0.015  # 20 000 draws: a 4.9-sigma band
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    embeddings = torch.randn(100, 3, 4)
    nulled = drop_conditions(embeddings, Guide(torch.zeros(3, 4)), 1.0, generator)
    assert torch.equal(nulled, torch.zeros(100, 3, 4))


def test_training_and_distillation_losses_feed_the_labels() -> None:
    diffusion, guide = GaussianDiffusion(linear_betas(100)), Guide(torch.tensor(5), 1.0, 5)
    student, teacher = Recorder(cond_unet()), Recorder(cond_unet())
    x0, y = torch.randn(64, 1, 8, 8), torch.randint(0, 5, (64,))
    conditional_epsilon_loss(diffusion, torch.Generator().manual_seed(0), guide, 0.0)(student, (x0, y))
    assert torch.equal(student.calls[-1][2], y)
    distillation_loss(teacher, diffusion, torch.Generator().manual_seed(0), 1.0, 1.0, (guide, 1.0))(student, (x0, y))
    assert bool((student.calls[-1][2] == 5).all()) and torch.equal(teacher.calls[-1][2], student.calls[-1][2])
    assert torch.equal(teacher.calls[-1][0], student.calls[-1][0])  # the same x_t for teacher and student


def test_bad_conditions_and_scales_are_refused_in_one_line() -> None:
    guide = guide_for(cond_unet(), 1.0)
    with pytest.raises(DiffquantError, match=r"labels 0\.\.7 are outside the model's classes 0\.\.4 \(model\.num_classes=5\)"):
        guide.check(torch.tensor([0, 7]), "cond")
    with pytest.raises(DiffquantError, match="int64"):
        guide.check(torch.tensor([0.0, 1.0]), "cond")
    with pytest.raises(DiffquantError, match=r"sampler\.guidance_scale=-1\.0 must be >= 0"):
        guide_for(cond_unet(), -1.0)
    plain = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8)
    assert guide_for(plain, 1.0) is None
    with pytest.raises(DiffquantError, match="needs a conditional model"):
        guide_for(plain, 3.0)
    with pytest.raises(DiffquantError, match=r"conditions of shape \(3, 2\) per sample; the model takes \(3, 4\)"):
        Guide(torch.zeros(3, 4)).check(torch.zeros(2, 3, 2), "cond")
