"""`device=cuda` runs PTQ's and QAT's float work on the GPU (calibration, GPTQ, reconstruction, bias correction,
smoothing, sensitivity, a size budget) and converts on the CPU: each method's model is as good as the CPU's.

Skipped without CUDA (CI has none); run on the lent GPU (docs/gpu.md). The CPU-side plumbing:
tests/quant/test_placement.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import diffquant
from diffquant.metrics.quality import sqnr_db
from diffquant.models.unet import UNet
from diffquant.quant import preparation
from diffquant.quant.calibration import CalibrationData

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

W4 = {"weight_bits": 4, "act_bits": 8}
METHODS: dict[str, dict[str, Any]] = {
    "w8a8-int8": {},
    "w4a8": W4,
    "timestep-groups": {**W4, "act_timestep_groups": 2, "dynamic_input": False},
    "smooth-rotate": {**W4, "smooth_alpha": 0.5, "rotate": True},
    "gptq": {**W4, "gptq": {"enabled": True, "num_samples": 32}},
    "brecq": {**W4, "recon": {"method": "brecq", "iters": 20, "num_samples": 32}},
    "bias-correction": {**W4, "bias_correction": 1},
    "lowrank": {**W4, "lowrank_rank": 2},
    "sensitivity": {**W4, "sensitivity": True},
    "budget": {**W4, "avg_weight_bits": 6.0},
}


def setup() -> tuple[UNet, CalibrationData]:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    return model, diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=16, timesteps=5)


def quality(model: torch.nn.Module, quantized: torch.nn.Module, data: CalibrationData) -> float:
    """SQNR of the quantized model's noise prediction against the float model's, on the CPU."""
    x, t = data.x[:32], data.t[:32]
    with torch.no_grad():
        return sqnr_db(model(x, t), quantized(x, t))


@pytest.mark.parametrize("name", METHODS)
def test_ptq_on_the_gpu_calibrates_there_and_matches_the_cpu(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = setup()
    devices: list[str] = []
    calibrate = preparation.run_calibration

    def recording(qmodel: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        devices.append(next(qmodel.parameters()).device.type)
        calibrate(qmodel, *args, **kwargs)

    monkeypatch.setattr(preparation, "run_calibration", recording)
    on_gpu = diffquant.quantize(model, data, device="cuda", **METHODS[name])
    assert devices and set(devices) == {"cuda"}
    devices.clear()
    on_cpu = diffquant.quantize(model, data, **METHODS[name])
    assert set(devices) == {"cpu"}
    assert all(p.device.type == "cpu" for p in on_gpu.parameters())  # converted / returned on the CPU
    gpu_db, cpu_db = quality(model, on_gpu, data), quality(model, on_cpu, data)
    assert gpu_db > 10 and abs(gpu_db - cpu_db) < 1.5, (gpu_db, cpu_db)


def test_qat_on_the_gpu_calibrates_and_learns_timestep_tables_there(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = setup()
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    devices: list[str] = []
    calibrate = preparation.run_calibration
    monkeypatch.setattr(
        preparation,
        "run_calibration",
        lambda m, *a, **k: (devices.append(next(m.parameters()).device.type), calibrate(m, *a, **k)),
    )
    settings = {**W4, "act_timestep_groups": 2, "dynamic_input": False}
    qat = {"steps": 20, "lsq": True, "batch_size": 16, "freeze_observer_step": 0, "data_weight": 0.0}
    runs = {
        d: diffquant.quantize(model, data, method="qat", device=d, train_images=images, qat=qat, **settings)
        for d in ("cuda", "cpu")
    }
    assert set(devices) == {"cuda", "cpu"}
    gpu_db, cpu_db = quality(model, runs["cuda"], data), quality(model, runs["cpu"], data)
    assert gpu_db > 10 and abs(gpu_db - cpu_db) < 2.0, (gpu_db, cpu_db)
