"""PTQ methods x bit widths on the default model: quality against FP32 and time to quantize.

    python benchmarks/ptq_methods.py [bits=W4A8,W4A4] [hydra overrides applied to every run]

Runs the real pipeline (the FP32 model, classifier and reference samples come from the cache, so
only the first run trains) and prints a markdown table. Each run's folder is kept under
outputs/benchmarks/ptq_methods/<method>-<bits>/.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffquant.config import register_configs, to_config
from diffquant.pipeline import run_experiment

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "naive: min-max, per-tensor, static": ["quant.observer=minmax", "quant.granularity=per_tensor", "quant.dynamic_input=false"],
    "histogram, per-channel, static": ["quant.dynamic_input=false"],
    "+ dynamic inputs (default)": [],
    "+ AdaRound": ["quant.recon.method=adaround"],
    "+ BRECQ": ["quant.recon.method=brecq"],
    "+ BRECQ + split shortcut": ["quant.recon.method=brecq", "quant.split_shortcut=true"],
}
BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}


def run(name: str, bits: str, overrides: list[str], extra: list[str]) -> dict:
    w, a = BITS[bits]
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    out = ROOT / "outputs" / "benchmarks" / "ptq_methods" / f"{slug}-{bits}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "quant=ptq", f"quant.weight_bits={w}", f"quant.act_bits={a}", "progress=false",
            f"paths.output_dir={out}", *overrides, *extra])
    return run_experiment(to_config(cfg))


def main() -> None:
    register_configs()
    chosen = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("bits=")), list(BITS))
    extra = [a for a in sys.argv[1:] if not a.startswith("bits=")]
    rows = []
    for bits in chosen:
        for name, overrides in METHODS.items():
            r = run(name, bits, overrides, extra)
            m = r["metrics"]
            rows.append((bits, name, r["execution"], m["eval/fid_cls"], m["eval/fid_cls_fp32"], m["eval/psnr_vs_fp32"],
                         m["eval/eps_rel_err"], m["perf/quantize_s"]))
            print(f"done: {bits} {name}: fid_cls {m['eval/fid_cls']}", file=sys.stderr, flush=True)
    print("| bits | method | execution | fid_cls | / FP32 | PSNR vs FP32 (dB) | eps_rel_err | quantize (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for bits, name, execution, fid, fid32, psnr, eps, secs in rows:
        ratio = f"{fid / fid32:.2f}" if fid is not None else "–"
        fid_s = f"{fid:.2f}" if fid is not None else "non-finite"
        psnr_s = f"{psnr:.1f}" if psnr is not None else "–"
        print(f"| {bits} | {name} | {execution} | {fid_s} | {ratio} | {psnr_s} | {eps:.4f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
