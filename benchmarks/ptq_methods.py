"""Every PTQ method and number format on the default model: quality against FP32 and time to quantize.

    python benchmarks/ptq_methods.py [bits=W8A8,W4A8,W4A4] [methods=rtn,gptq,...] [hydra overrides for every run]

Integer methods run at every chosen width; each floating-point format runs only at its own width
(FP8 at W8A8, the FP4 formats at W4A8 for weights only and W4A4 for weights and activations) and
the recipes only at theirs. `methods=` picks rows by key (the first column of `python
benchmarks/ptq_methods.py methods=list`). Runs the real pipeline (the FP32 model, classifier and
reference samples come from the cache, so only the first run trains) and prints a markdown table,
one row as each run finishes: the paired fid_cls delta with its 95 % interval
(docs/uncertainty.md), SSIM vs FP32, the share of parameters left in float (layers kept float and
low-rank branches; see common.float_param_fraction) and the packed bytes (results.json
`model/packed_bytes`: each weight at its width and format with its scales, float tensors at their
size; a fake-quantized state_dict itself is float). Each run's folder
is kept under outputs/benchmarks/ptq_methods/<method>-<bits>/.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from common import BITS, HEADER, compose_run, float_param_fraction, parse_args, table_row

from diffquant.pipeline import run_experiment

STATIC = "quant.dynamic_input=false"


@dataclass(frozen=True)
class Method:
    label: str
    overrides: list[str]
    widths: tuple[str, ...] = tuple(BITS)  # the widths it runs at (formats and recipes: their own)


METHODS = {
    "rtn": Method("RTN: min-max, per-tensor, static", ["quant.observer=minmax", "quant.granularity=per_tensor", STATIC]),
    "hist_static": Method("histogram, per-channel, static", [STATIC]),
    "default": Method("histogram, dynamic inputs (default)", []),
    "percentile": Method("percentile 99.99, static", ["quant.observer=percentile", STATIC]),
    "adaround": Method("AdaRound", ["quant.recon.method=adaround"]),
    "brecq": Method("BRECQ, static", ["quant.recon.method=brecq", STATIC]),
    "gptq": Method("GPTQ", ["quant.gptq.enabled=true"]),
    "smooth": Method("SmoothQuant α 0.5", ["quant.smooth_alpha=0.5"]),
    "rotate": Method("Hadamard rotation", ["quant.rotate=true"]),
    "lowrank": Method("low-rank branches, rank 4", ["quant.lowrank_rank=4"]),
    "svdquant": Method("SmoothQuant α 0.5 + low-rank rank 4", ["quant.smooth_alpha=0.5", "quant.lowrank_rank=4"]),
    "timestep": Method("per-timestep scales, 8 groups", [STATIC, "quant.act_timestep_groups=8"]),
    "group32": Method("group-wise weights, groups of 32", ["quant.group_size=32"]),
    "gptq_group32": Method("GPTQ, groups of 32", ["quant.gptq.enabled=true", "quant.group_size=32"]),
    "fp8_e4m3": Method("FP8 E4M3 (W + A)", ["quant.weight_format=fp8_e4m3", "quant.act_format=fp8_e4m3"], ("W8A8",)),
    "fp8_e5m2": Method("FP8 E5M2 (W + A)", ["quant.weight_format=fp8_e5m2", "quant.act_format=fp8_e5m2"], ("W8A8",)),
    "mxfp4_w": Method("MXFP4 weights", ["quant.weight_format=mxfp4"], ("W4A8",)),
    "nvfp4_w": Method("NVFP4 weights", ["quant.weight_format=nvfp4"], ("W4A8",)),
    "mxfp4": Method("MXFP4 (W + A)", ["quant.weight_format=mxfp4", "quant.act_format=mxfp4"], ("W4A4",)),
    "nvfp4": Method("NVFP4 (W + A)", ["quant.weight_format=nvfp4", "quant.act_format=nvfp4"], ("W4A4",)),
    "recipe_w4a8": Method("recipe: experiment=ptq_w4a8", ["experiment=ptq_w4a8"], ("W4A8",)),
    "recipe_w4a4": Method("recipe: experiment=ptq_w4a4", ["experiment=ptq_w4a4"], ("W4A4",)),
}


def main() -> None:
    chosen, keys, extra = parse_args(sys.argv[1:])
    if keys == ["list"]:
        print("\n".join(f"{k}: {m.label} ({', '.join(m.widths)})" for k, m in METHODS.items()))
        return
    unknown = sorted(set(keys or ()) - set(METHODS))
    if unknown:
        sys.exit(f"ptq_methods: unknown methods {unknown}; known: {', '.join(METHODS)}")
    print(HEADER, flush=True)
    for bits in chosen:
        for key in keys or list(METHODS):
            method = METHODS[key]
            if bits not in method.widths:
                continue
            cfg = compose_run("ptq_methods", key, bits, method.overrides, extra)
            results = run_experiment(cfg)
            print(table_row(bits, method.label, results, float_param_fraction(cfg, results)), flush=True)


if __name__ == "__main__":
    main()
