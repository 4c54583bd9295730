"""The GPU low-bit layers against reference arithmetic written here (run on the CPU, where PyTorch has the same kernels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffquant.quant.gpu.formats import (
    E4M3_MAX,
    Fp8Linear,
    Int4WeightOnlyLinear,
    Int8Linear,
    int4_weight,
    unpack_int4,
)


def layer(n_in: int = 64, n_out: int = 48, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight[3, 5] = 0.9  # an outlier: per-row scales must not let it flatten the other rows
    return linear


def inputs(rows: int = 32, n_in: int = 64) -> torch.Tensor:
    return torch.randn(rows, n_in, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("rowwise", [False, True])
def test_fp8_linear_is_the_e4m3_product_of_its_scaled_operands(rowwise: bool) -> None:
    lin, x = layer(), inputs()
    amax = float(x.abs().max())
    q = Fp8Linear(lin, amax, rowwise=rowwise, fast_accum=False)
    w = lin.weight.detach()
    w_scale = (w.abs().amax(dim=1, keepdim=True) if rowwise else w.abs().amax()) / E4M3_MAX
    x_scale = amax / E4M3_MAX
    w8 = (w / w_scale).to(torch.float8_e4m3fn).float() * w_scale  # reference: cast, then rescale
    x8 = (x / x_scale).to(torch.float8_e4m3fn).float() * x_scale
    expected = x8 @ w8.T + lin.bias.detach()
    got = q(x)
    assert got.dtype == torch.bfloat16 and got.shape == (32, 48)
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 output rounding only
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.shape == ((1, 48) if rowwise else ())


def test_fp8_clamps_inputs_beyond_the_calibrated_range() -> None:
    lin = layer()
    q = Fp8Linear(lin, input_amax=1.0, fast_accum=False)
    big = torch.full((16, 64), 10.0)  # ten times the calibrated range: saturates at 1.0, no inf / nan
    expected = q(torch.full((16, 64), 1.0))
    torch.testing.assert_close(q(big), expected)


def test_int8_linear_is_an_exact_integer_product_rescaled() -> None:
    lin, x = layer(), inputs()
    amax = float(x.abs().max())
    q = Int8Linear(lin, amax)
    w = lin.weight.detach().double()
    w_scale = w.abs().amax(dim=1) / 127
    x_scale = amax / 127
    wq = torch.round(w / w_scale[:, None]).clamp(-127, 127)
    xq = torch.round(x.double() / x_scale).clamp(-127, 127)
    expected = (xq @ wq.T) * (x_scale * w_scale) + lin.bias.detach().double()
    torch.testing.assert_close(q(x).double(), expected, rtol=1e-2, atol=1e-2)
    assert q.weight.dtype == torch.int8 and int(q.weight.abs().max()) == 127


def test_int8_pads_batches_of_few_rows_and_returns_only_them() -> None:
    lin, x = layer(), inputs()
    q = Int8Linear(lin, float(x.abs().max()))
    few = q(x[:3])  # the GPU kernel needs > 16 rows: padded with zeros inside, sliced after
    assert few.shape == (3, 48)
    torch.testing.assert_close(few, q(x)[:3])


def reference_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [out, in] in 0..15, scale, min) per group: the asymmetric min-max encoder, written out."""
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group, group)
    lo, hi = g.amin(2, keepdim=True), g.amax(2, keepdim=True)
    scale = (hi - lo) / 15
    q = torch.round((g - lo) / scale).clamp(0, 15)
    return q.reshape(out_f, in_f), scale, lo


@pytest.mark.parametrize("group", [32, 64])
def test_int4_weights_match_a_reference_encoder_and_pack_two_per_byte(group: int) -> None:
    w = layer(128, 16).weight.detach()
    packed, scales_and_zeros = int4_weight(w, group)
    q_ref, scale, lo = reference_int4(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (16, 64)
    assert torch.equal(unpack_int4(packed), q_ref.to(torch.int32))
    assert torch.equal(packed[0, 0] >> 4, q_ref[0, 0].to(torch.uint8))  # even column in the high nibble
    assert scales_and_zeros.shape == (128 // group, 16, 2)
    dequant = (q_ref.reshape(16, -1, group) * scale + lo).reshape(16, 128)
    module = Int4WeightOnlyLinear(layer(128, 16), group)
    bf16_step = float((lo.abs() + 8 * scale).max()) / 128  # scale and zero are stored in bf16 (8 significant bits)
    torch.testing.assert_close(module.dequantized_weight(), dequant, rtol=0, atol=bf16_step)
    assert float((dequant - w).abs().max()) <= float(scale.max()) / 2 + 1e-6  # rounding error: half a step


def test_int4_linear_multiplies_by_its_dequantized_weight() -> None:
    lin = layer(128, 48)
    x = inputs(8, 128)
    module = Int4WeightOnlyLinear(lin, 32)
    expected = x.to(torch.bfloat16).float() @ module.dequantized_weight().T + lin.bias.detach()
    got = module(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    assert module.kernel_device == "cpu"  # laid out for the CPU kernel on first use
