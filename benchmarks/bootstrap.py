"""Seconds the paired bootstrap adds to a run, per feature space shape: `python benchmarks/bootstrap.py [B]`.

Prints a markdown table (N paired samples, D feature dimensions, M real reference rows, B
replicates, torch threads, seconds) for the classifier space (D = 128) and the Inception space
(D = 2048) at 512 and 1024 samples (one and two eval seeds) against a digits-sized (359) and an
MNIST-sized (10 000) reference, on random features of those shapes: the cost depends on the shapes
only (and a little on the data: recall tests the pairs a ball can reach). The machine line
names the CPU and its int8 ISA class (`avx512_vnni`, `avx2`, ...).
"""

from __future__ import annotations

import sys
import time

import torch

from diffquant.metrics.paired import PairedSets, paired_bootstrap
from diffquant.quant.machine import cpu_info


def seconds(n: int, d: int, replicates: int, reference: int = 359) -> float:
    """Wall time of one paired bootstrap of n x d features against `reference` real rows (with logits and images)."""
    gen = torch.Generator().manual_seed(0)
    fp32 = torch.randn(n, d, generator=gen).relu()
    images = torch.rand(n, 1, 16, 16, generator=gen)
    logits = torch.randn(n, 10, generator=gen) if d == 128 else None  # only the classifier space has logits
    sets = PairedSets(
        torch.randn(reference, d, generator=gen).relu(),
        fp32,
        fp32 + 0.1 * torch.randn(n, d, generator=gen),
        logits,
        None if logits is None else logits + 0.1,
        images,
        images + 0.01,
    )
    start = time.perf_counter()
    paired_bootstrap(sets, 3, replicates, 0)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    replicates = int(argv[0]) if argv else 1000
    print(f"Machine: {cpu_info().describe()}; torch {torch.__version__}\n")
    print("| N | D | M | B | threads | seconds |\n|---|---|---|---|---|---|")
    for n, d, m in ((512, 128, 359), (1024, 128, 359), (512, 128, 10_000), (512, 2048, 359), (1024, 2048, 359)):
        print(f"| {n} | {d} | {m} | {replicates} | {torch.get_num_threads()} | {seconds(n, d, replicates, m):.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
