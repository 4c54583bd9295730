"""GELU's tanh form written as a sigmoid for compiled GPU models: the same function, cheaper code.

0.5 x (1 + tanh u) = x σ(2u) with u = √(2/π) (x + 0.044715 x³). Inductor emits `libdevice.tanh` (an
accurate, instruction-heavy routine) for the left side and a fast exponential for the sigmoid. In a
DiT-XL/2's fp8 step on an H100 the fused GELU -> fp8 kernel took 6.5 ms of 44 ms per forward at 58 %
of the memory bandwidth: bound by the tanh's instructions, not by its bytes. Applied to the bf16
reference and every low-bit model alike (`Compiling.sigmoid_gelu`, `backend.sigmoid_gelu`; on by
default), so their comparison stays fair. Timed on an H100, DDIM-50 (docs/results/2026-12-07-gpu-sigmoid-gelu-h100.md):
DiT-XL/2 at batch 128 fp8 2.416-2.421 -> 2.350-2.361 s (1.03x), bf16 compiled 3.263-3.274 -> 3.238-3.242 s
(1.01x); DiT-B/2 at batch 256 fp8 1.130-1.136 -> 1.103 s, bf16 compiled 1.431-1.434 -> 1.418 s.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

TWO_U = 2.0 * math.sqrt(2.0 / math.pi)  # 2u = TWO_U (x + 0.044715 x³)
CUBIC = 0.044715 * TWO_U


class SigmoidGelu(nn.Module):
    """`nn.GELU(approximate="tanh")` as x σ(2u): equal up to float rounding."""

    def forward(self, x: Tensor) -> Tensor:
        return x * (x * (TWO_U + CUBIC * x * x)).sigmoid()


def sigmoid_gelus(model: nn.Module) -> int:
    """In place: every `nn.GELU(approximate="tanh")` submodule becomes a `SigmoidGelu`; returns how many."""
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.GELU) and child.approximate == "tanh"
    ]
    for parent, name in targets:
        setattr(parent, name, SigmoidGelu())
    return len(targets)
