"""Where the error comes from: FP32 vs quantized noise predictions along the quantized trajectory.

Q-Diffusion and PTQD describe how quantization error accumulates over the sampling steps. We run
the sampler with the quantized model and, at every step, also evaluate the FP32 model on the very
same x_t, so MSE(ε_q, ε_fp32) is measured at the states the quantized model actually visits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class PairedEps(nn.Module):
    """Returns the quantized model's ε and records MSE(ε_q, ε_fp32) per timestep on the same input."""

    def __init__(self, quantized: nn.Module, fp32: nn.Module) -> None:
        super().__init__()
        self.quantized = quantized
        self.fp32 = fp32
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def forward(self, x: Tensor, t: Tensor, *cond: Tensor) -> Tensor:
        eps_q = self.quantized(x, t, *cond)
        eps_ref = self.fp32(x, t, *cond)
        step = int(t.flatten()[0])
        sq = (eps_q.double() - eps_ref.double()) ** 2
        self.sums[step] = self.sums.get(step, 0.0) + float(sq.sum())
        self.counts[step] = self.counts.get(step, 0) + sq.numel()
        return eps_q

    def per_t(self) -> dict[int, float]:
        """Mean squared error per timestep, in ascending t."""
        return {t: self.sums[t] / self.counts[t] for t in sorted(self.sums)}


@torch.no_grad()
def trajectory_eps_mse(
    sample: Callable[..., Tensor],
    fp32: nn.Module,
    quantized: nn.Module,
    noise: Tensor,
    batch_size: int = 256,
    bind: Callable[[nn.Module, slice], nn.Module] | None = None,
) -> dict[int, float]:
    """MSE(ε_q(x_t, t), ε_fp32(x_t, t)) at each sampler timestep, x_t from the quantized model's trajectory.

    `sample(model, noise=...)` is the configured sampler; rows of `noise` are processed in batches.
    `bind(model, rows)` gives a conditional model its rows' conditions (under guidance both halves of
    each call are compared).
    """
    paired = PairedEps(quantized, fp32)
    for start in range(0, noise.shape[0], batch_size):
        rows = slice(start, min(start + batch_size, noise.shape[0]))
        sample(paired if bind is None else bind(paired, rows), noise=noise[rows])
    return paired.per_t()


def mean_over_steps(per_t: dict[int, float]) -> float:
    """Mean of the per-step MSE over t > 0 (all steps if that leaves none).

    t = 0 is left out of the summary as in `eval/eps_rel_err`: there x_t carries noise of std 0.01,
    ε is barely identifiable, and the sampler weighs it by 0.01. The per-step series keeps it.
    """
    values = [v for t, v in per_t.items() if t > 0] or list(per_t.values())
    return sum(values) / len(values)
