"""Fast eager int8 execution: bit-identical dynamic quantization, GroupNorm on channels_last, fused wrappers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffquant.models.unet import UNet
from diffquant.quant.engine import set_engine
from diffquant.quant.execution.fast_int8 import ChannelsLastGroupNorm, Int8Wrapper, quantize_by_range, quantize_dynamic
from diffquant.quant.plan import QuantPlan
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context, machine_spec


def inputs(seed: int) -> list[torch.Tensor]:
    """Tensors of the kinds a layer sees: both memory formats, one-signed, tiny and flat ranges, linear inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 16, 16, 16, generator=gen) * 3 + 0.5
    return [
        x,
        x.contiguous(memory_format=torch.channels_last),
        x.abs(),
        -x.abs(),
        x * 1e-6,
        torch.zeros_like(x),
        torch.randn(256, 128, generator=gen),
    ]


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8bit", "7bit"])
@pytest.mark.parametrize("scripted", [False, True], ids=["python", "torchscript"])
def test_dynamic_quantization_is_bit_identical_to_aten(engine: str, reduce_range: bool, scripted: bool) -> None:
    """Python, and the TorchScript-compiled function that traced int8 models run (quantize_dynamic under tracing)."""
    set_engine(engine)
    qmax = 127 if reduce_range and engine != "qnnpack" else 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        by_range = torch.jit.script(quantize_by_range)
    for x in inputs(0):
        ours = by_range(x, qmax, reduce_range) if scripted else quantize_dynamic(x, reduce_range)
        aten = torch.quantize_per_tensor_dynamic(x, torch.quint8, reduce_range)
        assert (ours.q_scale(), ours.q_zero_point()) == (aten.q_scale(), aten.q_zero_point())
        assert torch.equal(ours.int_repr(), aten.int_repr())


def test_dynamic_quantization_keeps_channels_last() -> None:
    x = torch.randn(4, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    assert quantize_dynamic(x, False).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [4, 16], ids=["ATen-path", "own-path"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_channels_last_group_norm_matches_group_norm(size: int, affine: bool) -> None:
    torch.manual_seed(0)
    norm = ChannelsLastGroupNorm(8, 64, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = (torch.randn(4, 64, size, size) * 3 + 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = norm(x)
        ref = F.group_norm(x.contiguous(), 8, norm.weight, norm.bias, norm.eps)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() < 1e-4


def test_converted_unet_uses_fast_modules_and_matches_plain_convert() -> None:
    set_engine("fbgemm")
    torch.manual_seed(0)
    model = UNet(base_channels=16, channel_mults=(1, 2), image_size=16, groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 1, 16, 16, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    ctx = calibration_context(x, t, gen)
    out = PTQStrategy(QuantPlan(machine_spec(observer="minmax"), dynamic_input=True)).quantize(model, ctx)
    assert type(out.model.conv_in) is Int8Wrapper and type(out.model.down[0][0].norm1) is ChannelsLastGroupNorm
    with torch.no_grad():
        fast = out.model(x, t)
        for module in out.model.modules():  # back to the stock torch.ao modules: same int8 numerics
            if isinstance(module, Int8Wrapper):
                module.__class__ = Int8Wrapper.__mro__[1]
            elif isinstance(module, ChannelsLastGroupNorm):
                module.__class__ = nn.GroupNorm
        plain = out.model(x, t)
    assert (fast - plain).abs().max() < 1e-3 * plain.abs().max()


@pytest.mark.parametrize(("symmetric", "warns"), [(False, True), (True, False)], ids=["affine", "symmetric"])
def test_x86_engine_warns_when_affine_weights_miss_its_onednn_kernels(symmetric: bool, warns: bool, caplog) -> None:
    set_engine("x86")
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1,), image_size=8, groups=4).eval()
    x, t = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,))
    ctx = calibration_context(x, t)
    with caplog.at_level("WARNING", logger="diffquant"):
        PTQStrategy(QuantPlan(machine_spec("x86", observer="minmax", symmetric=symmetric))).quantize(model, ctx)
    assert ("quant.symmetric=true" in caplog.text) is warns
