"""A toy denoiser whose layer inputs grow with t, its calibration pairs and plans (per-timestep scale tests)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.quant.calibration import CalibrationData
from diffquant.quant.plan import QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from helpers import calibration_context, machine_spec


class GrowingRange(nn.Module):
    """A denoiser-shaped toy whose every layer input spans (1 + t / 60) times more at large t (16x over [0, T))."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c = nn.Conv2d(8, 2, 1, bias=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x * gain(t))))))


def gain(t: Tensor) -> Tensor:
    return (1 + t.float() / 60).view(-1, 1, 1, 1)


def toy() -> GrowingRange:
    torch.manual_seed(0)
    return GrowingRange().eval()


def pairs(per_step: int = 6, steps: int = 20, seed: int = 1) -> CalibrationData:
    """`steps` evenly spread timesteps (as `quant.calib.timesteps` keeps them), `per_step` rows each, in sampler order."""
    t = torch.linspace(999, 0, steps).round().long().repeat_interleave(per_step)
    return CalibrationData(torch.randn(len(t), 2, 8, 8, generator=torch.Generator().manual_seed(seed)), t)


def plan(groups: int, observer: str = "minmax", **spec: object) -> QuantPlan:
    return QuantPlan(machine_spec(observer=observer, **spec), timestep_groups=groups, num_timesteps=1000, script=True)


def calibrated(p: QuantPlan, data: CalibrationData) -> nn.Module:
    qmodel, _, _ = prepare_fake_quant(toy(), p, qat=False)
    calibrate(qmodel, calibration_context(data.x, data.t))
    return qmodel.eval()
