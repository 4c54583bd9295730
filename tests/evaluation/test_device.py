"""Evaluation on a GPU (`device=cuda`): which models go there, and the wrapper that takes CPU tensors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffquant.evaluation.compare import OnDevice, eval_device, on_device
from diffquant.metrics.quality import relative_error
from diffquant.models.unet import UNet
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context


@pytest.mark.parametrize(
    ("execution", "expected"), [("fakequant", "cuda"), ("fp32", "cuda"), ("int8", "cpu"), ("int8_inductor", "cpu")]
)
def test_int8_kernels_stay_on_the_cpu_and_the_rest_follows_device(execution: str, expected: str) -> None:
    assert eval_device("cuda", execution).type == expected
    assert eval_device("cpu", execution).type == "cpu"


class Recorder(nn.Module):
    """Returns half precision on the device it was called on, and remembers that device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.device] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.seen.append(x.device)
        return (x * t[:, None, None, None]).half()


def test_wrapper_moves_inputs_and_returns_float_on_the_cpu() -> None:
    inner = Recorder()
    assert on_device(inner, torch.device("cpu")) is inner  # nothing to wrap on the CPU
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([1, 2])
    out = OnDevice(inner, torch.device("cpu"))(x, t)
    assert inner.seen == [torch.device("cpu")] and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, (x * t[:, None, None, None]).half().float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fake_quantized_model_samples_on_the_gpu_like_on_the_cpu() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=8, groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 1000, (32,), generator=gen)
    out = PTQStrategy(QuantPlan(QuantSpec(weight_bits=4))).quantize(model, calibration_context(x, t, gen))
    assert out.execution == "fakequant"
    with torch.no_grad():
        ref, cpu = model(x, t), out.model(x, t)
        gpu = on_device(out.model, torch.device("cuda"))(x, t)
    assert next(out.model.parameters()).is_cuda and gpu.device.type == "cpu"

    # GPU convolutions round differently (TF32, other kernels), so some values land in the neighbouring
    # bin of a 4-bit grid: the two differ by less than either differs from FP32, and are equally far from it
    assert relative_error(gpu, cpu) < relative_error(cpu, ref)
    assert abs(relative_error(gpu, ref) - relative_error(cpu, ref)) < 0.2 * relative_error(cpu, ref)
