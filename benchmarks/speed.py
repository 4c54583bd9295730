"""End-to-end DDIM sampling speed: FP32 eager and compiled vs int8 on every engine, side by side in one run.

    python benchmarks/speed.py [batch=1,64] [steps=50] [repeats=5] [models=unet_tiny,unet_small]
                               [engines=fbgemm,x86,int8_fast,qnnpack,x86_inductor] [threads=<all cores>]
                               [calib_samples=16] [allocator=tuned|default] [hydra overrides ...]

Variants: `fp32` (eager), `fp32 compiled` (torch.compile with `torch._inductor.config.freezing =
True` set globally), `fp32 compiled+` (the same model compiled as `backend=x86_inductor` compiles
int8: GroupNorm from per-channel statistics, AOTInductor per input shape; see
`diffquant/quant/execution/compiling.py`; SiLU stays exact, as no 8-bit rounding follows it); the faster of the two
is the compiled FP32 baseline. Then one int8 model per engine, each quantized by the real PTQ
strategy of the composed config (histogram observers, dynamic inputs; `x86` with
`quant.symmetric=true`, which its oneDNN kernels need), and `int8_fast`: `experiment=int8_fast`
(x86, symmetric weights, static input scales). These eager int8 models run as frozen TorchScript
graphs, one per input shape, as the pipeline runs them (`backend.torchscript=true`: bit-identical,
tracing reported as `compile s`); each engine but qnnpack also gets a `<engine> python` row: the
same model run eagerly from Python (`backend.torchscript=false`). Weights are random (speed does
not depend on them), but calibration runs the real data flow: (x_t, t) pairs from the model's own
DDIM trajectory. Each round times one full sampling of every variant in turn; the table shows
medians over `repeats` rounds after one warm-up round (compiling happens there and is reported
apart). The speedup columns pair the rounds: the median of the per-round ratios (baseline time /
variant time, measured back to back) with their [min, max] over the rounds, since on a shared
machine a whole round can run 10-20 % slower than the next. Every round's times land in
`outputs/benchmarks/speed/<date>-<time>.json`, one file per run.

glibc malloc returns large blocks to the OS and page-faults them back on every step of a sampling
loop (hundreds of thousands of faults per run, FP32 markedly slower); unless `allocator=default`, the
script re-executes itself with the settings below and prints what it ran with.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial

TUNED_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "268435456",
}
DEFAULTS = {
    "batch": "1,64",
    "steps": "50",
    "repeats": "5",
    "models": "unet_tiny,unet_small",
    "engines": "fbgemm,x86,int8_fast,qnnpack,x86_inductor",
    "threads": str(os.cpu_count()),
    "calib_samples": "16",
    "allocator": "tuned",
}


ENGINES = ("fbgemm", "x86", "qnnpack", "x86_inductor")  # other names in `engines=` are experiment presets


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this script's options, the remaining Hydra overrides)."""
    opts = dict(DEFAULTS)
    rest = [a for a in argv if a.split("=", 1)[0] not in DEFAULTS]
    opts.update(a.split("=", 1) for a in argv if a.split("=", 1)[0] in DEFAULTS)
    return opts, rest


def reexec_with_tuned_malloc(opts: dict[str, str]) -> None:
    """Restart the interpreter with the tuned glibc settings unless they are set or `allocator=default`."""
    if opts["allocator"] == "tuned" and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})


import torch  # noqa: E402 - after the allocator decision: nothing large is allocated before it
from common import ROOT  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from diffquant.config import Config, register_configs, to_config  # noqa: E402
from diffquant.diffusion.samplers import ddim_sample  # noqa: E402
from diffquant.diffusion.schedule import GaussianDiffusion  # noqa: E402
from diffquant.metrics.quality import relative_error  # noqa: E402
from diffquant.models import build_model  # noqa: E402
from diffquant.pipeline import build_strategy  # noqa: E402
from diffquant.quant.calibration import CalibrationData, collect_trajectory  # noqa: E402
from diffquant.quant.engine import resolve_int8_numerics, set_engine  # noqa: E402
from diffquant.quant.execution.compiling import compile_fp32  # noqa: E402
from diffquant.quant.execution.scripted import ScriptedInt8  # noqa: E402
from diffquant.quant.machine import cpu_info  # noqa: E402
from diffquant.quant.plan import QuantContext  # noqa: E402
from diffquant.quant.size import state_dict_bytes  # noqa: E402


@dataclass
class Variant:
    name: str
    execution: str
    model: torch.nn.Module = field(repr=False)
    engine: str = "x86"
    bytes: int = 0
    scheme: str = ""  # the int8 grid the self-test chose (backend.int8_scheme=auto) or the run named
    compile_s: dict[int, float] = field(default_factory=dict)  # batch -> seconds of compiling (first call)
    times: dict[int, list[float]] = field(default_factory=dict)


def compose_config(overrides: list[str]) -> Config:
    """The project's config with `overrides`, validated."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_config(
            compose(
                config_name="config",
                overrides=["progress=false", f"paths.output_dir={ROOT / 'outputs' / 'benchmarks' / 'speed'}", *overrides],
            ),
            overrides,
        )


def int8_variant(overrides: list[str], name: str, model: torch.nn.Module, ctx: QuantContext, first_batch: int) -> Variant:
    """Quantize `model` with the config's PTQ strategy: `name` is an engine (x86: symmetric weights, as
    oneDNN needs) or a preset of conf/experiment (`int8_fast`) that brings its own backend."""
    engine_args = (
        [f"backend={name}", *(["quant.symmetric=true"] if name == "x86" else [])] if name in ENGINES else [f"experiment={name}"]
    )
    job = compose_config(
        [*overrides, "quant=ptq", *engine_args, f"eval.batch_size={first_batch}", f"eval.num_samples={max(first_batch, 32)}"]
    )  # >= 30: the bootstrap minimum
    engine = job.backend.engine
    set_engine(engine)
    numerics = resolve_int8_numerics(engine, job.backend.int8_scheme)
    outcome = build_strategy(job, numerics).quantize(model, ctx)
    variant = Variant(name, outcome.execution, outcome.model, engine, state_dict_bytes(outcome.model), numerics.scheme.name)
    if outcome.compile_seconds:
        variant.compile_s[first_batch] = outcome.compile_seconds
    return variant


def python_variants(int8: list[Variant]) -> list[Variant]:
    """`<name> python`: each scripted int8 model's eager module, run from Python (qnnpack's is too slow to repeat)."""
    return [
        Variant(f"{v.name} python", v.execution, v.model.eager, v.engine, v.bytes, v.scheme)
        for v in int8
        if isinstance(v.model, ScriptedInt8) and v.engine != "qnnpack"
    ]


@torch.no_grad()
def compile_at(variant: Variant, model: torch.nn.Module, x: torch.Tensor) -> None:
    """Compile a compiled variant for x's shape now (one forward, timed) and check it against the eager model."""
    t = torch.full((x.shape[0],), 500)
    start = time.perf_counter()
    out = variant.model(x, t)
    variant.compile_s.setdefault(x.shape[0], time.perf_counter() - start)
    if isinstance(variant.model, ScriptedInt8):
        assert variant.model.graph_for(x, t) is not None, f"{variant.name}: the TorchScript trace failed (see the log)"
    if variant.execution == "fp32":
        ref = model(x, t)
        error = relative_error(out, ref)
        assert error < 1e-3, f"{variant.name} differs from its eager model ({error:.2g}): a stale compiled graph?"


@dataclass
class Setup:
    """One model with random weights, its schedule, and PTQ's context on the model's own DDIM trajectory."""

    cfg: Config
    model: torch.nn.Module
    diffusion: GaussianDiffusion
    calib: CalibrationData
    ctx: QuantContext
    shape: tuple[int, int, int]


def build_setup(overrides: list[str], calib_samples: int) -> Setup:
    """The composed model (seeded random weights) and calibration pairs from `calib_samples` DDIM trajectories."""
    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    channels, size = cfg.dataset.kwargs["channels"], cfg.dataset.kwargs["image_size"]
    model = build_model(cfg.model, channels, size).eval()
    diffusion = GaussianDiffusion.from_config(
        cfg.diffusion.target, cfg.diffusion.num_timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end
    )
    shape = (channels, size, size)
    calib_noise = torch.randn(calib_samples, *shape, generator=torch.Generator().manual_seed(1))
    calib = collect_trajectory(
        partial(ddim_sample, model, diffusion, steps=cfg.sampler.steps), cfg.sampler.steps, cfg.quant.calib.timesteps, calib_noise
    )
    ctx = QuantContext(
        calibration=lambda: calib,
        train_batches=lambda: iter([]),
        diffusion=diffusion,
        generator=torch.Generator().manual_seed(0),
        calib_batch_size=cfg.quant.calib.batch_size,
        progress=False,
    )
    return Setup(cfg, model, diffusion, calib, ctx, shape)


def run_model(name: str, opts: dict[str, str], overrides: list[str]) -> list[Variant]:
    """Build, quantize and time every variant of one model; return them with their timings."""
    overrides = [f"model={name}", *overrides]
    setup = build_setup(overrides, int(opts["calib_samples"]))
    model, diffusion, calib, ctx, shape = setup.model, setup.diffusion, setup.calib, setup.ctx, setup.shape
    batches = [int(b) for b in opts["batch"].split(",")]
    steps, repeats = int(opts["steps"]), int(opts["repeats"])
    torch._dynamo.reset()  # nothing compiled for an earlier model may serve this one
    int8 = [int8_variant(overrides, e, model, ctx, batches[0]) for e in opts["engines"].split(",") if e]
    int8 += python_variants(int8)
    logging.getLogger("diffquant").setLevel(logging.ERROR)  # set_engine's qnnpack warning, once per timed run
    torch._inductor.config.freezing = True  # set globally before compiling (the PT2E variant sets it too)
    fp32_bytes = state_dict_bytes(model)
    variants = [
        Variant("fp32", "fp32", model, bytes=fp32_bytes),
        Variant("fp32 compiled", "fp32", torch.compile(model, dynamic=False), bytes=fp32_bytes),
        Variant("fp32 compiled+", "fp32", compile_fp32(model, (calib.x[:2], calib.t[:2])), bytes=fp32_bytes),
        *int8,
    ]
    for batch in batches:
        noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(2))
        for v in variants[1:]:
            if v.name.startswith("fp32 compiled") or v.execution == "int8_inductor" or isinstance(v.model, ScriptedInt8):
                set_engine(v.engine)
                compile_at(v, model, noise)
        for round_ in range(repeats + 1):  # round 0 is the warm-up, not timed
            for v in variants:
                set_engine(v.engine)
                start = time.perf_counter()
                ddim_sample(v.model, diffusion, noise, steps=steps)
                if round_:
                    v.times.setdefault(batch, []).append(time.perf_counter() - start)
            print(f"  {name} batch {batch}: round {round_}/{repeats} done", file=sys.stderr, flush=True)
    return variants


def paired_ratio(base: list[float], times: list[float]) -> str:
    """base / times round by round (each round times every variant back to back): median [min, max]."""
    ratios = [b / t for b, t in zip(base, times, strict=True)]
    return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]"


def table(name: str, variants: list[Variant], batches: list[int]) -> list[str]:
    """Markdown rows: median time, throughput, per-round speedups, bytes and compile time per variant and batch."""
    rows = []
    for batch in batches:
        base = variants[0].times[batch]
        compiled = min(
            (v for v in variants if v.name.startswith("fp32 compiled")), key=lambda v: statistics.median(v.times[batch])
        ).times[batch]
        for v in variants:
            med = statistics.median(v.times[batch])
            comp = f"{v.compile_s[batch]:.1f}" if batch in v.compile_s else "–"
            rows.append(
                f"| {name} | {batch} | {v.name} | {v.execution}{' ' + v.scheme if v.scheme else ''} | {med:.3f} | "
                f"{batch / med:.1f} | {paired_ratio(base, v.times[batch])} | {paired_ratio(compiled, v.times[batch])} | "
                f"{v.bytes:,} | {v.bytes / variants[0].bytes:.2f} | {comp} |"
            )
    return rows


def main() -> None:
    opts, overrides = parse(sys.argv[1:])
    reexec_with_tuned_malloc(opts)
    torch.set_num_threads(int(opts["threads"]))
    batches = [int(b) for b in opts["batch"].split(",")]
    header = {
        **opts,
        "machine": cpu_info().describe(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_env": {k: os.environ.get(k, "(glibc default)") for k in TUNED_MALLOC},
        "load_average_before": os.getloadavg(),
    }
    print(json.dumps(header), flush=True)
    rows, results = [], {}
    for name in opts["models"].split(","):
        variants = run_model(name, opts, overrides)
        rows += table(name, variants, batches)
        print("\n".join(rows[-len(variants) * len(batches) :]), file=sys.stderr, flush=True)
        results[name] = [
            {"variant": v.name, "execution": v.execution, "bytes": v.bytes, "compile_s": v.compile_s, "times": v.times}
            for v in variants
        ]
    print(f"load average after: {os.getloadavg()}")
    print(
        "| model | batch | variant | execution | s / sampling (median) | images/s | vs eager fp32 [min, max] | vs compiled fp32 [min, max] "
        "| state_dict bytes | vs fp32 | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows), flush=True)
    out = ROOT / "outputs" / "benchmarks" / "speed"
    out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y-%m-%d-%H%M%S") + ".json"  # one file per run: a record's raw rounds stay findable
    (out / name).write_text(json.dumps({"header": header, "results": results}, indent=1))
    print(f"per-round times: {out / name}")


if __name__ == "__main__":
    main()
