"""Known values of the elementwise error metrics."""

import math

import pytest
import torch

from diffquant.metrics.quality import mse, psnr, relative_error, sqnr_db


def test_mse_and_psnr_of_constant_offset() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a + 0.1
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / 0.01))  # range 2 -> ~26.02 dB
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0)


def test_identical_tensors() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert mse(x, x) == 0.0
    assert psnr(x, x) == math.inf
    assert relative_error(x, x) == 0.0
    assert sqnr_db(x, x) == math.inf


def test_relative_error_and_sqnr_of_scaled_signal() -> None:
    ref = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    approx = ref * 1.1  # noise = 0.1 * signal
    assert relative_error(approx, ref) == pytest.approx(0.1)
    assert sqnr_db(ref, approx) == pytest.approx(20.0)
    assert sqnr_db(ref, ref * 1.01) == pytest.approx(40.0)


def test_computed_in_float64() -> None:
    tiny = torch.full((4,), 1e-30, dtype=torch.float32)  # its square underflows to 0 in float32
    assert float((tiny**2).mean()) == 0.0
    assert mse(tiny, torch.zeros(4)) == pytest.approx(float(tiny[0]) ** 2, rel=1e-12)
    assert math.isfinite(psnr(tiny, torch.zeros(4)))


def test_zero_reference_and_shape_mismatch() -> None:
    zero = torch.zeros(3)
    assert relative_error(torch.ones(3), zero) == math.inf
    assert relative_error(zero, zero) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mse(torch.zeros(3), torch.zeros(4))
