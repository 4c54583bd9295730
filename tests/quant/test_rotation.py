"""Hadamard rotation of layer inputs: an orthogonal R, the float model unchanged, outliers spread before rounding."""

from __future__ import annotations

import torch
from torch import nn

import diffquant
from diffquant.metrics.quality import relative_error
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.rotation import InputRotation, hadamard, rotate
from helpers import random_pairs


def test_hadamard_is_orthonormal_and_block_diagonal_for_widths_that_are_not_powers_of_two() -> None:
    for n in (8, 64, 96, 384):
        h = hadamard(n).double()
        torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-6)
        block = n & -n
        assert torch.allclose(h[:block, :block].abs(), torch.full((block, block), block**-0.5, dtype=torch.float64))
    assert torch.equal(hadamard(96)[:32, 32:], torch.zeros(32, 64))  # 96 = 3 blocks of 32


class Mixer(nn.Module):
    """A 1x1 conv and a Linear over 32 channels, two of which carry outliers (x50)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Conv2d(1, 32, 3, padding=1)
        self.mix = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 32)
        self.out = nn.Conv2d(32, 1, 3, padding=1)
        self.register_buffer("gain", torch.ones(32))
        self.gain[[3, 17]] = 50.0
        with torch.no_grad():  # small weights on the outlier channels: every channel matters alike to the output
            self.mix.weight[:, [3, 17]] /= 50.0
            self.fc.weight[:, [3, 17]] /= 50.0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.inp(x) * self.gain.view(1, -1, 1, 1))
        h = self.fc((h * self.gain.view(1, -1, 1, 1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(h) + 0 * t.float().view(-1, 1, 1, 1)


def pairs() -> CalibrationData:
    return random_pairs(64, (1, 8, 8), seed=1)


def test_rotation_folded_into_weights_leaves_the_float_output_unchanged() -> None:
    model, calib = Mixer().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    with torch.no_grad():
        before = model(x, t)
        names = rotate(model)
        after = model(x, t)
    assert names == ["mix", "fc"]  # the 3x3 convs mix pixels too: not a channel rotation
    assert any(isinstance(h, InputRotation) for h in model.fc._forward_pre_hooks.values())
    assert relative_error(after, before) < 1e-5  # float32 rounding of the rotated products only


def test_rotation_lowers_the_8_bit_activation_error_on_outlier_channels() -> None:
    model, calib = Mixer().eval(), pairs()
    x, t = calib.x[:32], calib.t[:32]
    errors = {}
    for rotated in (False, True):
        q = diffquant.quantize(
            model,
            calib,
            act_bits=8,
            simulate=True,
            weight_bits=8,
            observer="minmax",
            dynamic_input=False,
            bias_correction=0,
            sensitivity=False,
            keep_float=["input", "output"],
            rotate=rotated,
        )
        with torch.no_grad():
            errors[rotated] = relative_error(q(x, t), model(x, t))
    assert errors[True] < 0.6 * errors[False]  # measured here: 0.52 without, 0.21 with (at 4-bit inputs it does not help)
