"""Packed model size (`quant.size.packed_bytes`, results.json `model/packed_bytes`): exact byte counts per format."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffquant.quant.size import packed_bytes, packed_weight_bytes, tensor_bytes
from diffquant.sweep.job import estimated_weight_bytes


def two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.Linear(40, 16))


@pytest.mark.parametrize(
    ("fmt", "bits", "group_size", "expected"),
    [
        ("int", 4, 0, 320 + 8 * 16),  # 640 weights at 4 bits, one scale + zero point per output channel
        ("int", 3, 0, 240 + 8 * 16),
        ("int", 4, 8, 320 + 8 * 80),  # one pair per group of 8 inputs
        ("fp8_e4m3", 8, 0, 640 + 4),  # one float32 per tensor
        ("mxfp4", 4, 0, 320 + 16 * math.ceil(40 / 32)),  # an E8M0 byte per block of 32 along each row (padded)
        ("nvfp4", 4, 0, 320 + 16 * math.ceil(40 / 16) + 4),  # an E4M3 byte per block of 16, a float32 per tensor
    ],
)
def test_a_linear_weight_packs_to_its_format_and_scales(fmt: str, bits: int, group_size: int, expected: int) -> None:
    layer = nn.Linear(40, 16)
    assert packed_weight_bytes(layer, bits, fmt, "per_channel", group_size) == expected


def test_per_tensor_and_transposed_weights_keep_one_scale() -> None:
    assert packed_weight_bytes(nn.Linear(40, 16), 8, "int", "per_tensor", 0) == 640 + 8
    assert packed_weight_bytes(nn.ConvTranspose2d(8, 4, 2), 8, "int", "per_channel", 0) == 128 + 8


def test_the_model_counts_float_tensors_at_their_size_and_layer_widths_by_pattern() -> None:
    model = two_layers()
    conv, fc = model[0], model[3]
    rest = tensor_bytes(model) - 4 * (conv.weight.numel() + fc.weight.numel())  # biases and the norm's affine
    conv_at_8 = conv.weight.numel() + 8 * 8
    fc_at_4 = math.ceil(fc.weight.numel() * 4 / 8) + 8 * 16
    got = packed_bytes(model, ["0", "3"], 4, "int", "per_channel", 0, layer_bits=[("0", 8)])
    assert got == rest + conv_at_8 + fc_at_4
    only_fc = packed_bytes(model, ["3"], 4, "int", "per_channel", 0, extra_bytes=100)  # the conv stays float32
    assert only_fc == rest + 4 * conv.weight.numel() + fc_at_4 + 100


def test_a_sweep_prefers_the_packed_size_and_falls_back_to_scaled_fp32_bytes() -> None:
    metrics = {"model/size_bytes_fp32": 3200}
    assert estimated_weight_bytes({"weight_bits": 4, "metrics": metrics}) == 400
    assert estimated_weight_bytes({"weight_bits": 4, "metrics": {**metrics, "model/packed_bytes": 555}}) == 555
