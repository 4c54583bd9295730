"""Frechet distance between Gaussian fits of two feature sets, in numpy (no scipy needed)."""

import numpy as np
from torch import Tensor


def feature_statistics(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64) of features [N, D]."""
    x = features.detach().cpu().double().numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, D], got {tuple(x.shape)}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(s1 + s2 - 2 sqrt(s1 s2)) for Gaussians N(mu1, s1), N(mu2, s2).

    Tr sqrt(s1 s2) is the sum of square roots of the eigenvalues of sqrt(s1) s2 sqrt(s1), which is
    symmetric PSD and so has the same eigenvalues as s1 s2 without a general matrix sqrt.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    root1 = sqrt_psd(sigma1)
    product = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Frechet distance between the Gaussian fits of feature sets a [N, D] and b [M, D]."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))
