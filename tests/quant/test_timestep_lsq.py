"""Learned per-timestep step sizes (QAT with `quant.qat.lsq=true` and `quant.act_timestep_groups`, EfficientDM's TALSQ):
fake quant and gradients against an LSQ+ reference written here, freezing, training, int8 conversion."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from torch.ao.quantization.observer import MinMaxObserver

from diffquant.metrics.quality import sqnr_db
from diffquant.quant.config import QATConfig, QuantConfig
from diffquant.quant.engine import set_engine
from diffquant.quant.lsq import step_size_param_groups
from diffquant.quant.strategies import QATStrategy
from diffquant.quant.timestep_scales import StepClock, TimestepFakeQuantize, TimestepQuantize, learn_timestep_tables
from diffquant.training.loop import TrainSettings
from helpers import calibration_context
from helpers.timestep_toy import calibrated, pairs, plan, toy

QMIN, QMAX = 0, 15


def table(scales: list[float], zero_points: list[int], t: Tensor) -> TimestepFakeQuantize:
    clock = StepClock(len(scales), 1000)
    fq = TimestepFakeQuantize(MinMaxObserver(quant_min=QMIN, quant_max=QMAX), QMIN, QMAX, clock)
    fq.scale.copy_(torch.tensor(scales))
    fq.zero_point.copy_(torch.tensor(zero_points, dtype=torch.int32))
    clock.set(t)
    return fq


def lsq_reference(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """LSQ+ by hand: y = (clamp(round(x / s + z)) − z) s with a straight-through round, one (s, z) per row."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, z = scale.view(shape), zero_point.view(shape)
    v = x / s + z
    rounded = torch.round(v).detach()
    inside = (rounded >= QMIN) & (rounded <= QMAX)  # on the grid: straight through; clipped: a constant level
    return torch.where(inside, (v + (rounded - v).detach() - z) * s, (rounded.clamp(QMIN, QMAX) - z) * s)


def test_learned_table_fake_quant_and_gradients_match_an_lsq_reference() -> None:
    t = torch.tensor([10, 300, 600, 900, 10, 900])  # groups 0, 1, 2, 3, 0, 3 of four
    rows = torch.tensor([0, 1, 2, 3, 0, 3])
    fq = table([0.1, 0.2, 0.3, 0.4], [3, 5, 7, 8], t)
    fq.learn()
    assert fq.learning and {n for n, _ in fq.named_parameters()} == {"scale", "zero_point"}
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2
    upstream = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    xa = x.clone().requires_grad_()
    (fq(xa) * upstream).sum().backward()

    s = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)
    z = torch.tensor([3.0, 5.0, 7.0, 8.0], requires_grad=True)
    xb = x.clone().requires_grad_()
    ref = lsq_reference(xb, s[rows], z[rows])
    (ref * upstream).sum().backward()
    grad_factor = 1.0 / (x.numel() * QMAX) ** 0.5  # LSQ's gradient scale on the step size and the offset
    clock_rows = fq.clock.current(6)
    torch.testing.assert_close(fq(x), ref.detach(), rtol=0, atol=1e-6)
    assert torch.equal(clock_rows, rows)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(fq.scale.grad, s.grad * grad_factor, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fq.zero_point.grad, z.grad * grad_factor, rtol=1e-4, atol=1e-7)
    assert bool((fq.scale.grad != 0).all())  # every group met rows, so every step size moves


def test_a_group_absent_from_the_batch_gets_no_gradient() -> None:
    fq = table([0.1, 0.2, 0.3, 0.4], [3, 5, 7, 8], torch.tensor([10, 10, 900]))
    fq.learn()
    fq(torch.randn(3, 5)).square().sum().backward()
    assert fq.scale.grad[1] == 0 and fq.scale.grad[2] == 0 and fq.scale.grad[0] != 0 and fq.scale.grad[3] != 0


def test_freeze_rounds_zero_points_onto_the_grid_and_restores_buffers() -> None:
    t = torch.tensor([10, 900])
    fq = table([0.1, 0.2], [3, 5], t)
    x = torch.randn(2, 8)
    before = fq(x)
    fq.learn()
    torch.testing.assert_close(fq(x), before, rtol=0, atol=1e-6)  # learning starts where calibration ended
    with torch.no_grad():
        fq.scale.copy_(torch.tensor([-0.5, 0.25]))
        fq.zero_point.copy_(torch.tensor([3.4, 16.7]))
    fq.freeze()
    assert not fq.learning and list(fq.parameters()) == []
    assert fq.zero_point.dtype == torch.int32 and fq.zero_point.tolist() == [3, QMAX]
    assert fq.scale[0].item() > 0 and fq.scale[1].item() == 0.25
    scale, zero_point = fq.calculate_qparams()
    assert scale.item() == fq.scale[0].item() and zero_point.item() == 3


def test_lsq_qat_learns_every_groups_step_size_and_converts_with_the_learned_tables() -> None:
    set_engine("fbgemm")
    data = pairs()
    p = replace(plan(4), script=False)
    start = calibrated(p, data)
    qmodel = calibrated(p, data)
    assert learn_timestep_tables(qmodel) == 6  # three layers: an input and an output table each
    step_groups = step_size_param_groups(qmodel, 1e-3, 0.5)
    assert len(step_groups[1]["params"]) == 12 and step_groups[1]["lr"] == 5e-4

    ctx = calibration_context(data.x, data.t, torch.Generator().manual_seed(0))
    ctx.train_batches = lambda: (torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(100))
    strategy = QATStrategy(p, TrainSettings(steps=6, lr=1e-3, log_every=100), 0, data_weight=0.0, lsq=True, lsq_lr_factor=0.1)
    out = strategy.quantize(toy(), ctx)
    assert out.execution == "int8"
    for name in ("a", "b", "c"):
        learned = out.model.get_submodule(name).quant  # script=False: the eager int8 model itself
        assert isinstance(learned, TimestepQuantize)
        calibrated_scale = start.get_submodule(name).quant.activation_post_process.scale
        assert not torch.equal(learned.scale, calibrated_scale)  # learned, not observed
        assert bool((learned.scale > 0).all())
        assert bool(((learned.zero_point >= 0) & (learned.zero_point <= 255)).all())
    fp32 = toy()
    x = torch.randn(8, 2, 8, 8)
    for t in (40, 990):
        tt = torch.full((8,), t)
        with torch.no_grad():
            assert sqnr_db(fp32(x, tt), out.model(x, tt)) > 15.0  # still a W8A8 model of the toy


def test_learned_tables_are_allowed_in_the_config() -> None:
    q = QuantConfig(act_timestep_groups=4, dynamic_input=False, qat=QATConfig(lsq=True))
    assert q.qat.lsq and q.act_timestep_groups == 4
