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


def ssim_per_image(a: Tensor, b: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al., 2004) of each image pair of [N, C, H, W]: float64 [N].

    Gaussian window of `window` pixels (σ = `sigma`), shrunk to the largest odd size that fits the
    image; local means, variances and covariance over the valid region; constants (0.01 L)² and
    (0.03 L)² for the data range L; the SSIM map averaged over pixels and channels.
    """
    a64, b64 = _pair(a, b)
    size = min(window, min(a64.shape[-2:]) - (1 - min(a64.shape[-2:]) % 2))
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(a64.shape[1], 1, size, size)

    def blur(x: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x, kernel, groups=x.shape[1])

    mu_a, mu_b = blur(a64), blur(b64)
    var_a, var_b = blur(a64 * a64) - mu_a**2, blur(b64 * b64) - mu_b**2
    cov = blur(a64 * b64) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def ssim(a: Tensor, b: Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM over the image pairs of two [N, C, H, W] sets."""
    return float(ssim_per_image(a, b, data_range).mean())
