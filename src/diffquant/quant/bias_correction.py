"""Empirical bias correction: shift each quantized layer's bias so its mean output matches FP32.

Rounding weights and activations to 8 bits adds an error whose per-channel mean is not zero
(Nagel et al., "Data-Free Quantization", 2019; Finkelstein et al., 2019). A diffusion sampler
integrates that mean over every step, so a small shift per layer becomes a visible drift of the
samples. On the calibration pairs we compare each wrapped layer's per-channel output mean in the
quantized model with the FP32 layer's and add the difference to the layer's bias. The bias of an
int8 conv or linear is float, so the correction costs nothing at run time and stays real int8.
Correcting one layer changes the inputs of the layers after it, so layers are corrected in call order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.quant.calibration import CalibrationData
from diffquant.quant.capture import run_hooked


def _channel_dims(out: Tensor) -> tuple[list[int], int]:
    """Reduction dims and channel count: [N, C, H, W] convs reduce N, H, W; [..., C] linears all but the last."""
    if out.dim() == 4:
        return [0, 2, 3], out.shape[1]
    return list(range(out.dim() - 1)), out.shape[-1]


@torch.no_grad()
def channel_means(model: nn.Module, modules: dict[str, str], data: CalibrationData, batch_size: int) -> dict[str, Tensor]:
    """Per key of `modules`, the per-channel mean output of the submodule it names over `data`."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(key: str):
        def record(_module: nn.Module, _args: object, out: Tensor) -> None:
            dims, channels = _channel_dims(out)
            sums[key] = sums.get(key, 0) + out.detach().double().sum(dim=dims)
            counts[key] = counts.get(key, 0) + out.numel() // channels

        return record

    run_hooked(
        model, data, batch_size, [model.get_submodule(name).register_forward_hook(hook(key)) for key, name in modules.items()]
    )
    return {key: (sums[key] / counts[key]).float() for key in sums}


@torch.no_grad()
def correct_bias(
    qmodel: nn.Module,
    fp_model: nn.Module,
    wrapped: list[str],
    fused: list[list[str]],
    data: CalibrationData,
    rounds: int,
    batch_size: int = 128,
) -> list[float]:
    """Add (FP32 mean - quantized mean) to each wrapped layer's bias, `rounds` times; the mean |shift| per round.

    Layers are corrected in the order the forward pass calls them, within one pass over all of
    `data` at once: each hook shifts its own output as well as its bias, so the layers after it see
    the corrected input (correcting all layers from one measurement overshoots, as every upstream
    shift also moves the downstream means). The FP32 side of a fused Conv-BN-ReLU group is the
    group's last module; after a ReLU the shift is approximate, which later rounds refine. Layers
    without a bias get one.
    """
    last_of = {group[0]: group[-1] for group in fused}
    reference = channel_means(fp_model, {name: last_of.get(name, name) for name in wrapped}, data, batch_size)
    inputs = data.inputs()
    shifts: list[float] = []
    for _ in range(rounds):
        moved: list[float] = []

        def hook(name: str, moved: list[float] = moved):
            def shift(_module: nn.Module, _args: object, out: Tensor) -> Tensor:
                dims, channels = _channel_dims(out)
                delta = reference[name] - out.double().mean(dim=dims).float()
                layer = qmodel.get_submodule(name).module
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(delta))
                layer.bias += delta.to(layer.bias.dtype)
                moved.append(float(delta.abs().mean()))
                view = [1] * out.dim()
                view[1 if out.dim() == 4 else -1] = channels
                return out + delta.reshape(view)

            return shift

        handles = [qmodel.get_submodule(name).register_forward_hook(hook(name)) for name in wrapped]
        try:
            qmodel.eval()
            qmodel(*inputs)
        finally:
            for handle in handles:
                handle.remove()
        shifts.append(sum(moved) / max(len(moved), 1))
    return shifts
