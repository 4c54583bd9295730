"""backend=x86_inductor: does the compiled int8 model compute its graph? Layer by layer and end to end, per scheme.

    python benchmarks/inductor_agreement.py [schemes=w7a8,w8a8] [batch=64] [model=unet_tiny] [calib_samples=16]

For each 8-bit scheme (whether this CPU's self-test calls it exact or not) the script quantizes the
model as `benchmarks/speed.py` does (random weights, calibration on its own DDIM trajectory, the
pipeline's float layers), compiles the graph with every int8 activation as an extra output, and
prints: per layer, teacher-forced (the graph's op fed the compiled model's own inputs), the share
of int8 values that differ and the largest difference in grid steps; end to end, the compiled
model against its graph and each against FP32, and whether `check_against_fp32` accepts it.
"""

from __future__ import annotations

import sys

import torch
from speed import build_setup, compose_config

from diffquant.metrics.quality import relative_error
from diffquant.quant.engine import SCHEMES, Int8Numerics, scheme_is_exact
from diffquant.quant.execution.agreement import check_against_fp32, teacher_forced
from diffquant.quant.execution.compiling import AotCompiled, rewrite_group_norms, rewrite_quantized_silus
from diffquant.quant.machine import cpu_info
from diffquant.quant.methods import MethodInputs
from diffquant.quant.pt2e import InductorPTQStrategy

DEFAULTS = {"schemes": "w7a8,w8a8", "batch": "64", "model": "unet_tiny", "calib_samples": "16"}


def row(scheme: str, batch: int, overrides: list[str], samples: int) -> str:
    """One table row: the scheme's teacher-forced and end-to-end agreement on this machine."""
    setup = build_setup(overrides, samples)
    exact = scheme_is_exact("x86_inductor", SCHEMES[scheme])
    quant = compose_config([*overrides, "quant=ptq", "backend=x86_inductor"]).quant
    plan = MethodInputs(quant, "x86_inductor", scheme, Int8Numerics(SCHEMES[scheme], exact, "x86_inductor")).plan()
    graph, _, _ = InductorPTQStrategy(plan).quantized_graph(setup.model, setup.ctx)
    rewrite_group_norms(graph)  # as CompiledInt8 compiles it
    rewrite_quantized_silus(graph)
    inputs = setup.calib.cycled(batch)
    out, layers = teacher_forced(graph, inputs, AotCompiled)
    with torch.no_grad():
        ref, fp32 = graph(*inputs), setup.model(*inputs)
    try:
        check_against_fp32(out, ref, fp32)
        verdict = "accepted"
    except Exception as exc:  # noqa: BLE001 - the verdict is the point
        verdict = f"refused ({type(exc).__name__})"
    shares = [layer.differing for layer in layers]
    return (
        f"| {scheme} | {'yes' if exact else 'no'} | {len(layers)} | {max(layer.max_steps for layer in layers)} | "
        f"{max(shares):.2g} | {sum(shares) / len(shares):.2g} | {relative_error(out, ref):.4f} | "
        f"{relative_error(ref, fp32):.4f} | {relative_error(out, fp32):.4f} | "
        f"{relative_error(out, fp32) / relative_error(ref, fp32):.2f} | {verdict} |"
    )


def main() -> None:
    opts = dict(DEFAULTS)
    opts.update(a.split("=", 1) for a in sys.argv[1:] if a.split("=", 1)[0] in DEFAULTS)
    overrides = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in DEFAULTS]
    print(f"{cpu_info().describe()}; torch {torch.__version__}; {opts}", flush=True)
    print(
        "| scheme | self-test exact | int8 activations | max step diff (teacher-forced) | max share differing "
        "| mean share differing | compiled vs graph | graph vs FP32 | compiled vs FP32 | ratio | check |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for scheme in opts["schemes"].split(","):
        print(row(scheme, int(opts["batch"]), [f"model={opts['model']}", *overrides], int(opts["calib_samples"])), flush=True)


if __name__ == "__main__":
    main()
