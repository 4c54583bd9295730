"""Shared by the benchmark scripts: compose one configuration and run the real pipeline on it."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffquant.config import register_configs, to_config
from diffquant.pipeline import run_experiment

ROOT = Path(__file__).resolve().parents[1]
BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}


def parse_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`bits=W4A8,W4A4` selection, or every width; the remaining Hydra overrides for every run)."""
    chosen = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("bits=")), list(BITS))
    return chosen, [a for a in argv if not a.startswith("bits=")]


def run_one(benchmark: str, name: str, bits: str, overrides: list[str], extra: list[str]) -> dict:
    """Run `overrides` at the `bits` width into outputs/benchmarks/<benchmark>/<name>-<bits>/; return results.json."""
    register_configs()
    w, a = BITS[bits]
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    out = ROOT / "outputs" / "benchmarks" / benchmark / f"{slug}-{bits}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        method = [] if any(o.startswith("quant=") for o in overrides) else ["quant=ptq"]
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
    return run_experiment(to_config(cfg))


def table_row(bits: str, name: str, results: dict) -> str:
    """One markdown row: execution, fid_cls (and its ratio to FP32), PSNR, eps_rel_err, time to quantize."""
    m = results["metrics"]
    fid, fid32, psnr = m["eval/fid_cls"], m["eval/fid_cls_fp32"], m["eval/psnr_vs_fp32"]
    fid_s, ratio = (f"{fid:.2f}", f"{fid / fid32:.2f}") if fid is not None else ("non-finite", "–")
    psnr_s = f"{psnr:.1f}" if psnr is not None else "–"
    eps = m["eval/eps_rel_err"]
    eps_s = f"{eps:.4f}" if eps is not None else "non-finite"
    print(f"done: {bits} {name}: fid_cls {fid}", file=sys.stderr, flush=True)
    return f"| {bits} | {name} | {results['execution']} | {fid_s} | {ratio} | {psnr_s} | {eps_s} | {m['perf/quantize_s']:.1f} |"


HEADER = (
    "| bits | method | execution | fid_cls | / FP32 | PSNR vs FP32 (dB) | eps_rel_err | quantize (s) |\n"
    "|---|---|---|---|---|---|---|---|"
)


def run_table(benchmark: str, methods: dict[str, list[str]]) -> None:
    """Every method at every chosen width (`bits=` on the command line), a markdown row as each run ends."""
    chosen, extra = parse_args(sys.argv[1:])
    print(HEADER, flush=True)
    for bits in chosen:
        for name, overrides in methods.items():
            print(table_row(bits, name, run_one(benchmark, name, bits, overrides, extra)), flush=True)
