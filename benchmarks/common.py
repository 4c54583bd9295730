"""Shared by the benchmark scripts: compose one configuration and run the real pipeline on it."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffquant.config import Config, register_configs, to_config
from diffquant.data.loading import load_data
from diffquant.models import build_model
from diffquant.pipeline import run_experiment

ROOT = Path(__file__).resolve().parents[1]
BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}


def parse_args(argv: list[str]) -> tuple[list[str], list[str] | None, list[str]]:
    """(`bits=W4A8,W4A4` selection or every width; `methods=a,b` selection or None: all; the remaining Hydra overrides)."""
    chosen = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("bits=")), list(BITS))
    methods = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("methods=")), None)
    return chosen, methods, [a for a in argv if not a.startswith(("bits=", "methods="))]


def compose_run(benchmark: str, name: str, bits: str, overrides: list[str], extra: list[str]) -> Config:
    """The configuration of `overrides` at the `bits` width, writing into outputs/benchmarks/<benchmark>/<name>-<bits>/."""
    register_configs()
    w, a = BITS[bits]
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    out = ROOT / "outputs" / "benchmarks" / benchmark / f"{slug}-{bits}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        method = [] if any(o.startswith("quant=") for o in overrides) else ["quant=ptq"]
        if not any(o.startswith(("experiment=", "quant.preset=")) for o in overrides):
            method.append("quant.preset=none")  # each row is its method on the group defaults, not the width's recipe
        cfg = compose(
            config_name="config",
            overrides=[
                *method,
                *overrides,
                f"quant.weight_bits={w}",
                f"quant.act_bits={a}",
                "progress=false",
                f"paths.output_dir={out}",
                *extra,
            ],
        )
    return to_config(cfg)


def run_one(benchmark: str, name: str, bits: str, overrides: list[str], extra: list[str]) -> dict:
    """Run `overrides` at the `bits` width into outputs/benchmarks/<benchmark>/<name>-<bits>/; return results.json."""
    return run_experiment(compose_run(benchmark, name, bits, overrides, extra))


def float_param_fraction(cfg: Config, results: dict) -> float:
    """Share of the FP32 model's parameters that stay in float: the quantizable layers kept float
    (`float_layers`: weights and biases) plus the low-rank branches (`model/lowrank_params`).
    Norms and the biases of quantized layers are float in every scheme and not counted."""
    data = load_data(cfg.dataset, cfg.seed)
    modules = dict(build_model(cfg.model, data.channels, data.image_size).named_modules())
    total = sum(p.numel() for p in modules[""].parameters())
    kept = sum(p.numel() for name in results.get("float_layers", {}) for p in modules[name].parameters(recurse=False))
    kept += results["metrics"].get("model/lowrank_params", 0) or 0
    return kept / total


def _num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else "–"


def table_row(bits: str, name: str, results: dict, float_share: float | None = None) -> str:
    """One markdown row: execution, fid_cls (and its ratio to FP32), the paired fid_cls delta with its 95 %
    interval, PSNR and SSIM vs FP32, eps_rel_err, float parameters, packed model bytes, time to quantize."""
    m = results["metrics"]
    fid, fid32, psnr = m["eval/fid_cls"], m["eval/fid_cls_fp32"], m["eval/psnr_vs_fp32"]
    fid_s, ratio = (f"{fid:.2f}", f"{fid / fid32:.2f}") if fid is not None else ("non-finite", "–")
    delta, ci = m.get("eval/fid_cls_delta"), m.get("eval/fid_cls_delta_ci95")
    delta_s = f"{delta:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if delta is not None and ci else "–"
    eps = m["eval/eps_rel_err"]
    eps_s = f"{eps:.4f}" if eps is not None else "non-finite"
    share = f"{100 * float_share:.2f}" if float_share is not None else "–"
    packed = m.get("model/packed_bytes")  # weights at their widths with scales (fake-quantized state_dicts are float)
    print(f"done: {bits} {name}: fid_cls {fid}", file=sys.stderr, flush=True)
    return (
        f"| {bits} | {name} | {results['execution']} | {fid_s} | {ratio} | {delta_s} | {_num(psnr, '.1f')} "
        f"| {_num(m.get('eval/ssim_vs_fp32'), '.4f')} | {eps_s} | {share} | {packed if packed is not None else '–'} "
        f"| {m['perf/quantize_s']:.1f} |"
    )


HEADER = (
    "| bits | method | execution | fid_cls | / FP32 | fid_cls delta [95 % CI] | PSNR vs FP32 (dB) | SSIM vs FP32 "
    "| eps_rel_err | float params % | packed bytes | quantize (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run_table(benchmark: str, methods: dict[str, list[str]]) -> None:
    """Every method at every chosen width (`bits=` on the command line), a markdown row as each run ends."""
    chosen, _, extra = parse_args(sys.argv[1:])
    print(HEADER, flush=True)
    for bits in chosen:
        for name, overrides in methods.items():
            cfg = compose_run(benchmark, name, bits, overrides, extra)
            results = run_experiment(cfg)
            print(table_row(bits, name, results, float_param_fraction(cfg, results)), flush=True)
