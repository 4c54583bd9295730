"""Elementwise error metrics between tensors, computed in float64."""

import math

import torch
from torch import Tensor


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a.detach().cpu().double(), b.detach().cpu().double()


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared difference."""
    a64, b64 = _pair(a, b)
    return float(((a64 - b64) ** 2).mean())


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(range^2 / mse); inf for identical tensors."""
    return psnr_from_mse(mse(a, b), data_range)


def psnr_from_mse(err: float, data_range: float = 2.0) -> float:
    """PSNR in dB of a mean squared error: 10 log10(range^2 / mse); inf for zero error."""
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / err)


def relative_error(approx: Tensor, ref: Tensor) -> float:
    """||approx - ref|| / ||ref|| (Frobenius norms); inf when ref is zero and approx is not."""
    approx64, ref64 = _pair(approx, ref)
    diff, scale = float(torch.linalg.vector_norm(approx64 - ref64)), float(torch.linalg.vector_norm(ref64))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def sqnr_db(ref: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20 log10(||ref|| / ||ref - approx||); inf if equal."""
    ref64, approx64 = _pair(ref, approx)
    noise, signal = float(torch.linalg.vector_norm(ref64 - approx64)), float(torch.linalg.vector_norm(ref64))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)
