"""SmoothQuant scale migration: the float model is unchanged, the quantizer sees evened-out channels, bad α is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffquant
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import relative_error
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.smoothing import InputScale, smooth, smoothing_scales
from helpers import random_pairs


class OutlierNet(nn.Module):
    """A Linear whose input has two outlier channels (x100): a per-tensor activation scale wastes its grid on them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 16)
        self.out = nn.Conv2d(16, 1, 1)
        self.register_buffer("gain", torch.ones(16))
        self.gain[[2, 9]] = 100.0
        with torch.no_grad():  # their weights are small: every channel contributes alike (SmoothQuant's case)
            self.fc.weight[:, [2, 9]] /= 100.0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + t.float().view(-1, 1, 1, 1) / 1000
        h = self.fc(h.permute(0, 2, 3, 1) * self.gain).permute(0, 3, 1, 2)
        return self.out(torch.relu(h))


def pairs() -> CalibrationData:
    return random_pairs(64, (1, 8, 8), seed=1)


def test_scales_follow_the_formula_and_leave_the_float_output_unchanged() -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    with torch.no_grad():
        before = model(x, t)
        act = torch.rand(16) + 0.1
        weight = model.fc.weight.detach().clone()
        s = smoothing_scales(act, weight, 0.5)
        torch.testing.assert_close(s, act.sqrt() / weight.abs().amax(dim=0).sqrt())
        names = smooth(model, calib, 0.5, 32)
        after = model(x, t)
    assert names == ["conv", "fc", "out"]
    assert any(isinstance(h, InputScale) for h in model.fc._forward_pre_hooks.values())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_smoothing_lowers_the_w8a8_error_on_outlier_channels() -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:32], calib.t[:32]
    errors = {}
    for alpha in (None, 0.5):
        extra = {} if alpha is None else {"smooth_alpha": alpha}
        q = diffquant.quantize(
            model,
            calib,
            simulate=True,
            observer="minmax",
            dynamic_input=False,
            bias_correction=0,
            sensitivity=False,
            keep_float=[],
            **extra,
        )
        wrapper = q.fc
        assert any(isinstance(h, InputScale) for h in wrapper._forward_pre_hooks.values()) == (alpha is not None)
        with torch.no_grad():
            errors[alpha] = relative_error(q(x, t), model(x, t))
    assert errors[0.5] < 0.2 * errors[None]  # measured here: 0.59 without, 0.019 with


def test_smoothed_int8_kernels_run_the_division_and_survive_save_and_load(tmp_path) -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    q = diffquant.quantize(model, calib, smooth_alpha=0.5, observer="minmax", bias_correction=0, sensitivity=False, keep_float=[])
    assert q.diffquant_recipe["execution"] == "int8"
    with torch.no_grad():
        out = q(x, t)
        assert relative_error(out, model(x, t)) < 0.1
        loaded = diffquant.load(diffquant.save(q, tmp_path / "q.pt"))
        assert torch.equal(loaded(x, t), out)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_zero_one_is_refused(alpha: float) -> None:
    with pytest.raises(DiffquantError, match=rf"quant\.smooth_alpha={alpha} is out of range; allowed: 0\.0\.\.1\.0"):
        diffquant.quantize(OutlierNet().eval(), pairs(), smooth_alpha=alpha)
