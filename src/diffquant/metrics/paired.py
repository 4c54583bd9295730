"""Paired bootstrap of FP32-vs-quantized sample metrics: both sets resampled with the same row indices.

Row i of the FP32 and of the quantized set start from the same noise, so a replicate draws rows of
BOTH sets with one index vector: the noise a replicate sees is shared, and within it FP32 and
quantized differ only by the quantization. The real reference set stays fixed (it is the yardstick,
not the uncertainty asked about). Replicates are exact, not approximations: what does not depend
on the indices (the reference's matrix square root, Gram and distance matrices, class
probabilities, per-row errors) is computed once. Point estimates are the same formulas at "every
row once"; tests/metrics/test_paired.py checks both against the plain metric functions. A replicate
costs one eigenproblem of size min(D, distinct rows) per set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffquant.metrics.fid import feature_statistics, sqrt_psd
from diffquant.metrics.inception_score import inception_score_from_probs
from diffquant.metrics.precision_recall import knn_radii, pairwise_distances
from diffquant.metrics.quality import psnr, psnr_from_mse, ssim_per_image


def bootstrap_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n] row indices drawn with replacement; numpy's PCG64 from `seed`, so fixed by (n, B, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def indices_digest(indices: np.ndarray) -> str:
    """Short hash of an index matrix: two runs pair replicate by replicate only if theirs are equal."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval [low, high] of bootstrap replicates."""
    low, high = np.percentile(values, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(low), float(high)


class ResampledFrechet:
    """FID(reference, X[idx]) of one feature set X [N, D] for many index vectors, exact.

    With R = sqrt(Σ_ref) and Y = (X − mean) R, R Σ_b R = Y_bᵀ Y_b / (N − 1) for the centred resampled
    rows Y_b; its non-zero eigenvalues are those of the count-weighted Gram matrix of the distinct
    rows drawn (about 0.63 N). So Tr sqrt(Σ_ref Σ_b) needs an eigenproblem of size min(D, distinct).
    """

    def __init__(self, ref_mu: np.ndarray, ref_sigma: np.ndarray, features: Tensor, ref_root: np.ndarray | None = None) -> None:
        x = features.detach().cpu().double().numpy()
        self.n, self.d = x.shape
        self.ref_mu, self.ref_trace = np.asarray(ref_mu, np.float64), float(np.trace(ref_sigma))
        root = sqrt_psd(np.asarray(ref_sigma, np.float64)) if ref_root is None else ref_root
        self.shift = x.mean(axis=0)  # centring first keeps the trace of Σ_b free of cancellation
        self.xc = x - self.shift
        self.sq = (self.xc**2).sum(axis=1)
        self.y = self.xc @ root
        self.gram = self.y @ self.y.T if self.d > self.n // 2 else None

    def values(self, counts: np.ndarray) -> np.ndarray:
        """FID for each row of `counts` [B, N] (how often each row of X is drawn)."""
        n = self.n
        mean_c = counts @ self.xc / n
        mean_term = ((mean_c + self.shift - self.ref_mu) ** 2).sum(axis=1)
        trace_b = (counts @ self.sq - n * (mean_c**2).sum(axis=1)) / (n - 1)
        if self.gram is None:  # D x D for every replicate: batched, 32 at a time
            trace_sqrt = np.concatenate([self._trace_sqrt_batch(counts[i : i + 32]) for i in range(0, len(counts), 32)])
        else:
            trace_sqrt = np.array([self._trace_sqrt(w) for w in counts])
        return np.maximum(mean_term + self.ref_trace + trace_b - 2.0 * trace_sqrt, 0.0)

    def _trace_sqrt_batch(self, w: np.ndarray) -> np.ndarray:
        mean = w @ self.y / self.n
        matrix = np.matmul(self.y.T[None] * w[:, None, :], self.y) - self.n * mean[:, :, None] * mean[:, None, :]
        eigvals = np.linalg.eigvalsh((matrix + matrix.transpose(0, 2, 1)) / (2.0 * (self.n - 1)))
        return np.sqrt(np.clip(eigvals, 0.0, None)).sum(axis=1)

    def _trace_sqrt(self, w: np.ndarray) -> float:
        support = np.flatnonzero(w)
        ws = w[support].astype(np.float64)
        if self.gram is None or support.size >= self.d:
            ys = self.y[support]
            mean = ws @ ys / self.n
            matrix = (ys * ws[:, None]).T @ ys - self.n * np.outer(mean, mean)
        else:  # Z Zᵀ instead of Zᵀ Z for Z = sqrt(w) (Y_S − ȳ): the same non-zero eigenvalues
            k = self.gram[np.ix_(support, support)]
            u = k @ ws / self.n
            root = np.sqrt(ws)
            matrix = (k - u[:, None] - u[None, :] + ws @ u / self.n) * root[:, None] * root[None, :]
        eigvals = np.linalg.eigvalsh((matrix + matrix.T) / (2.0 * (self.n - 1)))
        return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


class ResampledPrecisionRecall:
    """Improved precision / recall of fake[idx] against fixed real features, from distances computed once.

    Precision counts resampled rows inside a real k-NN ball (fixed per row). Recall uses the k-NN radii
    of the resampled set itself, duplicates included, exactly as `precision_recall(real, fake[idx])`:
    a row's radius is the (k+1)-th smallest distance of its sorted row, each neighbour counted as often
    as it was drawn (only the first few sorted neighbours are ever needed).
    """

    def __init__(self, real: Tensor, fake: Tensor, k: int, real_radii: Tensor | None = None, block: int = 2**25) -> None:
        real, fake = real.double(), fake.double()
        self.k, self.n, self.block = k, fake.shape[0], block
        d_fr = pairwise_distances(fake, real)
        real_radii = knn_radii(real, k) if real_radii is None else real_radii
        self.inside = (d_fr <= real_radii.unsqueeze(0)).any(dim=1).double()
        self.sorted, self.order = pairwise_distances(fake, fake).sort(dim=1)
        self.d_rf = d_fr.T.contiguous()  # [M, N]

    def _radii(self, counts: Tensor) -> Tensor:
        """k-NN radius [b, N] of every row within each resampled set `counts` [b, N]."""
        for width in (min(self.n, 8 * (self.k + 1)), self.n):  # the full row only if the first ones are not enough
            reached = counts[:, self.order[:, :width]].cumsum(dim=2) >= self.k + 1
            if bool(reached[..., -1].all()):
                break
        first = reached.to(torch.uint8).argmax(dim=2)
        return self.sorted[torch.arange(self.n).unsqueeze(0), first]

    def values(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) [B] for each row of `counts` [B, N] (how often each fake row is drawn).

        Recall tests only the (real, fake) pairs that some replicate's ball can reach (distance at most
        the fake row's largest radius over the replicates): the same answer without the M x N test per
        replicate (M: 10 000 for a held-out MNIST split).
        """
        weights = torch.from_numpy(counts)
        precision = (weights @ self.inside / self.n).numpy()
        chunk = max(1, self.block // (self.n * min(self.n, 8 * (self.k + 1))))
        radii = torch.cat([self._radii(weights[i : i + chunk]) for i in range(0, weights.shape[0], chunk)])
        radii = radii.masked_fill(weights == 0, -1.0)  # rows not drawn cover nothing (distances are >= 0)
        real, fake = torch.nonzero(self.d_rf <= radii.max(dim=0).values.unsqueeze(0), as_tuple=True)
        dist = self.d_rf[real, fake]
        recall, step = [], max(1, self.block // max(1, real.numel()))
        for start in range(0, weights.shape[0], step):
            inside = (dist.unsqueeze(0) <= radii[start : start + step, fake]).double()
            hits = torch.zeros(inside.shape[0], self.d_rf.shape[0], dtype=torch.float64).index_add_(1, real, inside)
            recall.append((hits > 0).double().mean(dim=1))
        return precision, torch.cat(recall).numpy()


@dataclass(frozen=True)
class PairedSets:
    """Features of the fixed real reference and of two paired sample sets (row i of both: the same noise)."""

    ref: Tensor  # [M, D]
    fp32: Tensor  # [N, D]
    quantized: Tensor  # [N, D]
    fp32_logits: Tensor | None = None  # [N, C], for the Inception Score
    q_logits: Tensor | None = None
    fp32_samples: Tensor | None = None  # [N, ...] images, for PSNR of quantized vs FP32
    q_samples: Tensor | None = None


@dataclass
class PairedBootstrap:
    """Point estimates on the full sets, 95 % percentile intervals and the per-replicate values.

    Names: `fid`, `precision`, `recall`, `is` are deltas (quantized − FP32); `psnr` and `ssim` compare q with FP32.
    `point` also holds `fid_fp32` and `fid_quantized`.
    """

    point: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    replicates: dict[str, np.ndarray]
    seed: int
    indices_sha256: str


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    return np.stack([np.bincount(row, minlength=n) for row in indices]).astype(np.float64)


@contextmanager
def single_threaded() -> Iterator[None]:
    """torch, BLAS and OpenMP at one thread: a replicate's problems are small (a few hundred rows), so threads
    only add synchronisation, and on a busy 2-core machine they made the replicates far slower."""
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


def paired_bootstrap(sets: PairedSets, k: int = 3, replicates: int = 1000, seed: int = 0) -> PairedBootstrap:
    """Resample rows of both sets jointly `replicates` times; deltas quantized − FP32 with 95 % intervals."""
    n = sets.fp32.shape[0]
    if sets.quantized.shape != sets.fp32.shape or n < 2:
        raise ValueError(
            f"paired sets need equal shapes [N >= 2, D], got {tuple(sets.fp32.shape)} / {tuple(sets.quantized.shape)}"
        )
    indices = bootstrap_indices(n, replicates, seed)
    counts = _counts(indices, n)
    ref_mu, ref_sigma = feature_statistics(sets.ref)
    root = sqrt_psd(ref_sigma)  # once for both sets (2048-d: the costliest single step)
    labels = ("fp32", "quantized")
    frechet = {
        label: ResampledFrechet(ref_mu, ref_sigma, feats, root) for label, feats in zip(labels, (sets.fp32, sets.quantized))
    }
    real_radii = knn_radii(sets.ref.double(), k)  # the real k-NN balls: the same for both sets and every replicate
    pr = {
        label: ResampledPrecisionRecall(sets.ref, feats, k, real_radii)
        for label, feats in zip(labels, (sets.fp32, sets.quantized))
    }
    point: dict[str, float] = {}
    reps: dict[str, np.ndarray] = {}
    with single_threaded():
        fids = {label: frechet[label].values(counts) for label in labels}
        for label in labels:
            point[f"fid_{label}"] = float(frechet[label].values(np.ones((1, n)))[0])  # = frechet_distance on the full set
        resampled = {label: pr[label].values(counts) for label in labels}
        full = {label: pr[label].values(np.ones((1, n))) for label in labels}  # = precision_recall on the full sets
    point["fid"], reps["fid"] = point["fid_quantized"] - point["fid_fp32"], fids["quantized"] - fids["fp32"]
    for i, name in enumerate(("precision", "recall")):
        point[name] = float(full["quantized"][i][0] - full["fp32"][i][0])
        reps[name] = resampled["quantized"][i] - resampled["fp32"][i]

    if sets.fp32_logits is not None and sets.q_logits is not None:
        probs = {label: torch.softmax(logits.double(), dim=1) for label, logits in zip(labels, (sets.fp32_logits, sets.q_logits))}
        with single_threaded():
            score = {
                label: np.array([inception_score_from_probs(p[torch.from_numpy(row)])[0] for row in indices])
                for label, p in probs.items()
            }
        point["is"] = inception_score_from_probs(probs["quantized"])[0] - inception_score_from_probs(probs["fp32"])[0]
        reps["is"] = score["quantized"] - score["fp32"]

    if sets.fp32_samples is not None and sets.q_samples is not None:
        diff = (sets.q_samples.detach().cpu().double() - sets.fp32_samples.detach().cpu().double()).reshape(n, -1)
        row_mse = (diff**2).mean(dim=1).numpy()  # equal row sizes: the mean of row MSEs is the set's MSE
        point["psnr"] = psnr(sets.q_samples, sets.fp32_samples, data_range=2.0)
        errors = row_mse[indices].mean(axis=1)
        reps["psnr"] = np.array([psnr_from_mse(float(e), 2.0) for e in errors])
        row_ssim = ssim_per_image(sets.q_samples, sets.fp32_samples, data_range=2.0).numpy()
        point["ssim"], reps["ssim"] = float(row_ssim.mean()), row_ssim[indices].mean(axis=1)

    ci95 = {name: percentile_interval(values) for name, values in reps.items() if name != "psnr"}
    if "psnr" in reps:  # PSNR falls as the error grows; via the error, identical rows (inf dB) stay well-defined
        low, high = percentile_interval(errors)
        ci95["psnr"] = (psnr_from_mse(high, 2.0), psnr_from_mse(low, 2.0))
    return PairedBootstrap(point, ci95, reps, seed, indices_digest(indices))
