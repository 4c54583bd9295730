"""Per-layer sensitivity: SQNR of each quantized layer's output against the FP32 layer on calibration data."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffquant.metrics.quality import sqnr_db
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.capture import capture
from diffquant.quant.timestep_scales import StepClock, clock_of


@torch.no_grad()
def layer_sensitivity(
    qmodel: nn.Module,
    fp_model: nn.Module,
    wrapped: list[str],
    fused: list[list[str]],
    data: CalibrationData,
    batch_size: int = 64,
) -> list[dict[str, object]]:
    """One row per wrapped layer.

    `sqnr_isolated_db`: the quantized layer (input quantizer included) on the FP32 layer's own input,
    i.e. the error this layer adds by itself. `sqnr_accumulated_db`: the layer's output inside the
    quantized model, i.e. the error accumulated up to and including it.
    """
    last_of = {group[0]: group[-1] for group in fused}  # fused Conv-BN-ReLU: compare with the ReLU's output
    fp_in = capture(fp_model, wrapped, data, batch_size, outputs=False)
    fp_out = capture(fp_model, [last_of.get(n, n) for n in wrapped], data, batch_size, inputs=False)
    q_out = capture(qmodel, wrapped, data, batch_size, inputs=False)
    clock = clock_of(qmodel)  # per-timestep input scales: a layer called alone needs its rows' t set
    rows: list[dict[str, object]] = []
    for name in wrapped:
        ref = fp_out[last_of.get(name, name)]["out"][0]
        layer = qmodel.get_submodule(name)
        isolated = torch.cat(isolated_outputs(layer, fp_in[name]["args"][0], data.t, batch_size, clock))
        inner = getattr(layer, "module", layer)
        fq = getattr(inner, "weight_fake_quant", None)
        rows.append(
            {
                "layer": name,
                "type": type(inner).__name__,
                "weight_bits": int(math.log2(fq.quant_max - fq.quant_min + 1)) if fq is not None else None,
                "sqnr_isolated_db": sqnr_db(ref, isolated),
                "sqnr_accumulated_db": sqnr_db(ref, q_out[name]["out"][0]),
            }
        )
    return rows


def isolated_outputs(layer: nn.Module, inputs: Tensor, t: Tensor, batch_size: int, clock: StepClock | None) -> list[Tensor]:
    """The layer on its captured FP32 inputs, in chunks of `batch_size` rows.

    With per-timestep scales each chunk's rows need their t set (rows align with the calibration pairs'
    t). Without them the captured rows need not align with t at all (classifier-free guidance doubles
    each call's rows), so every chunk is run, whatever t says.
    """
    chunks = inputs.split(batch_size)
    if clock is None:
        return [layer(x) for x in chunks]
    outputs = []
    for x, rows_t in zip(chunks, t.split(batch_size), strict=True):
        clock.set(rows_t)
        outputs.append(layer(x))
    return outputs
