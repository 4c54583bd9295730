"""Conditional models through the Python API: guided calibration pairs, int8 PTQ, QAT with labels, save / load, bad input."""

from __future__ import annotations

import pytest
import torch

import diffquant
from diffquant.diffusion.guidance import guide_for
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.quant.api import RECIPE_ATTR
from diffquant.quant.calibration import CalibrationData


def cond_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4, num_classes=4).eval()


@pytest.fixture(scope="module")
def guided() -> tuple[UNet, CalibrationData]:
    model = cond_unet()
    return model, diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=5, guidance_scale=3.0)


def test_guided_pairs_hold_both_halves_of_each_call(guided) -> None:
    model, pairs = guided
    assert len(pairs) == 2 * 8 * 5 and pairs.guidance_scale == 3.0
    first = pairs.rows(slice(0, 16))  # step 0: 8 conditional rows, then the same x_t with the null class
    assert torch.equal(first[0][:8], first[0][8:]) and torch.equal(first[1][:8], first[1][8:])
    assert torch.equal(first[2], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]))
    again = diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=5, guidance_scale=3.0)
    for a, b in zip(pairs.inputs(), again.inputs()):
        assert torch.equal(a, b)
    chosen = diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=4, timesteps=2, cond=torch.tensor([3]))
    assert len(chosen) == 8 and bool((chosen.cond == 3).all())  # guidance 1: one pass, the given label cycled


def test_w8a8_int8_of_a_guided_model_keeps_its_predictions(guided, tmp_path) -> None:
    model, pairs = guided
    qmodel = diffquant.quantize(model, pairs, method="ptq", backend="fbgemm")
    recipe = getattr(qmodel, RECIPE_ATTR)
    assert recipe["execution"] == "int8"
    assert "label_embed" not in recipe["wrapped_layers"] and "time_embed.0" in recipe["wrapped_layers"]
    guide = guide_for(model, 3.0)
    labels = torch.tensor([0, 1, 2, 3] * 4)
    x, t = pairs.x[:16], pairs.t[:16]
    with torch.no_grad():
        ref, out = guide.bind(model, labels)(x, t), guide.bind(qmodel, labels)(x, t)
    assert sqnr_db(ref, out) > 20
    path = diffquant.save(qmodel, tmp_path / "q.pt")
    loaded = diffquant.load(path)
    with torch.no_grad():
        assert torch.equal(guide.bind(loaded, labels)(x, t), out)


def test_qat_distils_a_conditional_model_with_its_labels(guided) -> None:
    model, pairs = guided
    images, labels = torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 4
    with pytest.raises(DiffquantError, match="needs train_labels"):
        diffquant.quantize(model, pairs, method="qat", train_images=images, qat={"steps": 2})
    qmodel = diffquant.quantize(
        model, pairs, method="qat", train_images=images, train_labels=labels, qat={"steps": 3, "batch_size": 8}
    )
    x, t, y = pairs.cycled(8)
    with torch.no_grad():
        assert sqnr_db(model(x, t, y), qmodel(x, t, y)) > 10  # 3 steps from the PTQ start: still the same function
    with pytest.raises(DiffquantError, match=r"labels 0\.\.5 are outside the model's classes 0\.\.3"):
        diffquant.quantize(model, pairs, method="qat", train_images=images, train_labels=torch.arange(32) % 6)


def test_pairs_that_do_not_fit_the_model_are_refused_in_one_line(guided) -> None:
    model, pairs = guided
    plain = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    plain_pairs = diffquant.calibration_pairs(plain, shape=(1, 8, 8), steps=4, num_samples=2, timesteps=2)
    with pytest.raises(DiffquantError, match="the model is conditional but the calibration pairs carry no conditions"):
        diffquant.quantize(model, plain_pairs)
    with pytest.raises(DiffquantError, match="the calibration pairs carry conditions, but the model is unconditional"):
        diffquant.quantize(plain, pairs)
    wrong = CalibrationData(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DiffquantError, match=r"per-row shapes \(3, 8, 8\), \(\) do not fit the model \(RuntimeError"):
        diffquant.quantize(plain, wrong)
    with pytest.raises(DiffquantError, match=r"labels 0\.\.9 are outside the model's classes 0\.\.3"):
        diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=4, num_samples=2, timesteps=2, cond=torch.tensor([0, 9]))
    with pytest.raises(DiffquantError, match="cond= was given, but the model is unconditional"):
        diffquant.calibration_pairs(plain, shape=(1, 8, 8), steps=4, num_samples=2, timesteps=2, cond=torch.tensor([0]))
    with pytest.raises(DiffquantError, match=r"guidance_scale=-0\.5 must be >= 0"):
        diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=4, num_samples=2, timesteps=2, guidance_scale=-0.5)
