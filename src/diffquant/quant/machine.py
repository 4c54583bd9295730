"""What machine ran: CPU model and the instruction-set features that decide int8 numerics and speed."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# Flags of /proc/cpuinfo that change int8 / bf16 kernels: AVX2 int8 GEMMs sum u8 x s8 pairs into a
# saturating int16 (vpmaddubsw); the VNNI instructions (AVX-512 or AVX) accumulate in int32.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU model, its int8-relevant ISA flags, ATen's dispatch level and the threads torch uses."""

    model: str
    machine: str
    isa: tuple[str, ...] = field(default=())
    aten_capability: str = ""
    threads: int = 1

    @property
    def has_vnni(self) -> bool:
        """int32-accumulating int8 dot products (AVX-512 VNNI or AVX-VNNI)."""
        return "avx512_vnni" in self.isa or "avx_vnni" in self.isa

    @property
    def isa_class(self) -> str:
        """One word for the class of int8 hardware: `avx512_vnni`, `avx_vnni`, `avx512`, `avx2`, `arm64` or `other`."""
        for flag, name in (
            ("avx512_vnni", "avx512_vnni"),
            ("avx_vnni", "avx_vnni"),
            ("avx512f", "avx512"),
            ("avx2", "avx2"),
            ("asimd", "arm64"),
        ):
            if flag in self.isa:
                return name
        return "other"

    def describe(self) -> str:
        """One line for logs and error messages, e.g. `AMD EPYC (x86_64, avx2 class: avx2 fma; 2 threads)`."""
        flags = " ".join(self.isa) or "no listed ISA flags"
        return f"{self.model} ({self.machine}, {self.isa_class} class: {flags}; {self.threads} threads)"

    def as_dict(self) -> dict[str, Any]:
        """The record stored in results.json `provenance.machine`."""
        return {**asdict(self), "isa": list(self.isa), "isa_class": self.isa_class, "has_vnni": self.has_vnni}


def _cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Read the CPU model and flags (Linux /proc/cpuinfo; elsewhere the platform's processor string)."""
    try:
        model, flags = _cpuinfo_fields(cpuinfo.read_text())
    except OSError:
        model, flags = "", set()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = ""
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        machine=platform.machine(),
        isa=tuple(f for f in ISA_FLAGS if f in flags),
        aten_capability=capability,
        threads=torch.get_num_threads() or os.cpu_count() or 1,
    )


@contextmanager
def pinned_threads(threads: int = 1) -> Iterator[None]:
    """Run a block on `threads` intra-op threads, then restore the previous count.

    ATen splits an elementwise kernel into one chunk per thread, and a chunk's tail that is not a
    multiple of the vector width runs the scalar code, whose SiLU / exp round differently from the
    vectorized ones: the same float model gives other last bits at another thread count. Stages
    whose results are discrete decisions on those bits (calibrated ranges) run pinned.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
