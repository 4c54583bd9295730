"""`placement.on_device`: the float model and the calibration pairs PTQ / QAT work on, moved where `device` says.

On the CPU nothing moves (the same objects, no copy); elsewhere ("meta" stands in for a GPU here) the
copy and the pairs move once and the originals stay on the CPU. The GPU run itself:
tests/quant/gpu/test_gpu_calibration.py.
"""

from __future__ import annotations

import torch
from torch import nn

from diffquant.quant.api import Run, make_strategy, quant_settings
from diffquant.quant.config import BackendConfig
from diffquant.quant.engine import resolve_int8_numerics
from diffquant.quant.placement import on_device
from diffquant.quant.strategies import PTQStrategy, QATStrategy
from helpers import calibration_context


def context() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    ctx = calibration_context(torch.randn(6, 2, 4, 4), torch.arange(6))
    ctx.example = (torch.zeros(2, 2, 4, 4), torch.tensor([0, 1]))
    return nn.Sequential(nn.Conv2d(2, 3, 1)), ctx


def test_on_the_cpu_nothing_moves_or_is_copied() -> None:
    model, ctx = context()
    assert on_device(model, ctx, "cpu") == (model, ctx)


def test_elsewhere_the_model_copy_and_the_pairs_move_once_and_the_originals_stay() -> None:
    model, ctx = context()
    moved_model, moved = on_device(model, ctx, "meta")
    assert moved_model is not model and moved_model[0].weight.device.type == "meta"
    assert model[0].weight.device.type == "cpu"
    data = moved.calibration()
    assert data is moved.calibration()  # made once
    assert {data.x.device.type, data.t.device.type} == {"meta"} and data.x.shape == (6, 2, 4, 4)
    assert ctx.calibration().x.device.type == "cpu"
    assert all(part.device.type == "meta" for part in moved.example)
    assert all(part.device.type == "cpu" for part in ctx.example)


def test_the_run_device_reaches_the_ptq_and_qat_strategies() -> None:
    backend = BackendConfig(engine="fbgemm")
    numerics = resolve_int8_numerics("fbgemm", "auto")
    ptq = make_strategy(quant_settings("ptq", "fbgemm", {}), backend, numerics, Run(device="cuda"))
    qat = make_strategy(quant_settings("qat", "fbgemm", {}), backend, numerics, Run(device="cuda"))
    assert isinstance(ptq, PTQStrategy) and ptq.device == "cuda"
    assert isinstance(qat, QATStrategy) and qat.settings.device == "cuda"
