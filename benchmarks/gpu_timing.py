"""Timing helpers of the GPU benchmarks: CUDA-synchronised wall clocks, peak memory, a kernel profile, Inductor
settings from the command line, and the machine's description (no-ops or CPU figures without CUDA)."""

from __future__ import annotations

import ast
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffquant.diffusion.samplers import ddim_sample
from diffquant.diffusion.schedule import GaussianDiffusion


def sync(device: torch.device | None = None) -> None:
    """Wait for `device`'s queued kernels (a CUDA device); with None, for the current CUDA device where CUDA is in use."""
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of one call of `fn`, between synchronisations of `device` (see `sync`)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall seconds of `fn` over `repeats` synchronised calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def sample_seconds(model: nn.Module, diffusion: GaussianDiffusion, noise: Tensor, steps: int) -> float:
    """Wall seconds of one DDIM sampling of `steps` steps (CUDA synchronised)."""
    return timed(lambda: ddim_sample(model, diffusion, noise, steps=steps), noise.device)


def forward_ms(model: nn.Module, x: Tensor, t: Tensor, iters: int = 10) -> float:
    """Median milliseconds of one forward, each timed alone between synchronisations (the sampler's cost left out)."""
    return median_seconds(lambda: model(x, t), iters, warmup=0, device=x.device) * 1000


def peak_memory_gib(runner: nn.Module, diffusion: GaussianDiffusion, noise: Tensor) -> float:
    """Peak GPU memory allocated during a 2-step sampling (0 on the CPU)."""
    if noise.device.type != "cuda":
        return 0.0
    torch.cuda.reset_peak_memory_stats(noise.device)
    sample_seconds(runner, diffusion, noise, 2)
    return torch.cuda.max_memory_allocated(noise.device) / 2**30


def profile(variant: str, runner: nn.Module, x: Tensor, t: Tensor) -> None:
    """The 25 CUDA kernels of most total time over 3 forwards."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runner(x, t)
        torch.cuda.synchronize()
    print(f"--- {variant}: top CUDA kernels over 3 forwards")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=80), flush=True)


def inductor_config(settings: str) -> None:
    """Apply `name=value` pairs to `torch._inductor.config` (one line naming the setting if it does not exist)."""
    import torch._inductor.config as config

    for pair in filter(None, settings.split(",")):
        name, _, value = pair.partition("=")
        if not hasattr(config, name):
            raise SystemExit(f"--inductor: torch._inductor.config has no setting {name!r}")
        setattr(config, name, ast.literal_eval(value))


def machine(device: torch.device) -> dict[str, str]:
    """The GPU, its compute capability, torch / CUDA versions and the host CPU."""
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True, text=True).stdout.strip()
    if device.type != "cuda":
        return {"gpu": "none (a CPU smoke run)", "torch": torch.__version__, "cpu": cpu}
    cc = torch.cuda.get_device_capability()
    return {
        "gpu": torch.cuda.get_device_name(),
        "capability": f"{cc[0]}.{cc[1]}",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cpu": cpu,
    }
