"""quant/execution/agreement.py: the compiled-int8 check against FP32, and the teacher-forced per-layer comparison."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.models.unet import UNet
from diffquant.quant import pt2e
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.execution.agreement import check_against_fp32, teacher_forced, with_quantized_outputs
from diffquant.quant.execution.compiling import AotCompiled, rewrite_group_norms, rewrite_quantized_silus
from helpers import machine_spec

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="the optional extra `inductor`")


def noisy(ref: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """`ref` plus Gaussian noise of relative size `scale`."""
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed))
    return ref + noise * scale * ref.norm() / noise.norm()


def test_a_compiled_model_as_close_to_fp32_as_its_graph_passes_however_far_from_the_graph() -> None:
    fp32 = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    graph, compiled = noisy(fp32, 0.05, 1), noisy(fp32, 0.05, 2)  # two realizations: 0.07 apart, each 0.05 from FP32
    check_against_fp32(compiled, graph, fp32)
    check_against_fp32(fp32 * (1 + 1e-6), fp32, fp32)  # nothing quantized: float differences only


@pytest.mark.parametrize(("error", "passes"), [(0.06, True), (0.07, False), (0.2, False)], ids=["1.2x", "1.4x", "4x"])
def test_a_compiled_model_farther_from_fp32_than_its_graph_is_refused_in_one_line(error: float, passes: bool) -> None:
    fp32 = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    graph, compiled = noisy(fp32, 0.05, 1), noisy(fp32, error, 2)
    if passes:
        check_against_fp32(compiled, graph, fp32)
        return
    with pytest.raises(DiffquantError, match="farther from FP32 than its graph") as err:
        check_against_fp32(compiled, graph, fp32)
    assert "\n" not in str(err.value)


def quantized_tiny_unet(batch: int) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, torch.Tensor]]:
    """A tiny UNet's converted PT2E graph on this machine's exact 8-bit grids, rewritten as CompiledInt8 compiles it."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(batch, 1, 8, 8, generator=gen), torch.randint(0, 1000, (batch,), generator=gen)
    graph = pt2e.quantize_pt2e(model, CalibrationData(x, t), batch, machine_spec("x86_inductor"), [])
    rewrite_group_norms(graph)
    rewrite_quantized_silus(graph)
    return graph, (x, t)


@pytest.mark.slow
@needs_torchao
def test_teacher_forcing_the_graph_with_itself_finds_every_int8_activation_equal() -> None:
    graph, inputs = quantized_tiny_unet(8)
    multi, names = with_quantized_outputs(graph)
    with torch.no_grad():
        out, *quantized = multi(*inputs)
        assert torch.equal(out, graph(*inputs))
    assert len(names) == len(quantized) > 10 and all(q.dtype == torch.uint8 for q in quantized)
    _, layers = teacher_forced(graph, inputs, lambda g: g)  # the eager graph as its own "compiled" model
    assert [layer.name for layer in layers] == names and all(layer.max_steps == 0 for layer in layers)


@pytest.mark.heavy
@pytest.mark.slow
@needs_torchao
def test_every_compiled_int8_layer_agrees_with_the_graph_to_one_step_on_its_own_inputs() -> None:
    """On the grids this CPU's self-test calls exact, the compiled kernels differ from the graph only in rounding ties."""
    graph, inputs = quantized_tiny_unet(16)
    _, layers = teacher_forced(graph, inputs, AotCompiled)
    assert layers and max(layer.max_steps for layer in layers) <= 1
    assert max(layer.differing for layer in layers) < 1e-3
