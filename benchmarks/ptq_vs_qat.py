"""PTQ vs QAT across bit widths on the default model: quality against FP32 and wall time to quantize.

    python benchmarks/ptq_vs_qat.py [bits=W4A8,W4A4] [hydra overrides applied to every run]

Both start from the same cached FP32 model; QAT's time includes its calibration and fine-tuning.
Each run's folder is kept under outputs/benchmarks/ptq_vs_qat/<method>-<bits>/.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffquant.config import register_configs, to_config
from diffquant.pipeline import run_experiment

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "PTQ (histogram, dynamic inputs)": ["quant=ptq"],
    "PTQ (BRECQ, static inputs)": ["quant=ptq", "quant.recon.method=brecq", "quant.dynamic_input=false"],
    "QAT (data + distillation)": ["quant=qat", "quant.qat.steps=800", "quant.qat.lr=5e-4", "quant.qat.schedule=cosine",
                                  "quant.qat.warmup_steps=50", "quant.qat.freeze_observer_step=400"],
}
BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}


def run(name: str, bits: str, overrides: list[str], extra: list[str]) -> dict:
    w, a = BITS[bits]
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    out = ROOT / "outputs" / "benchmarks" / "ptq_vs_qat" / f"{slug}-{bits}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *overrides, f"quant.weight_bits={w}", f"quant.act_bits={a}", "progress=false", f"paths.output_dir={out}", *extra])
    return run_experiment(to_config(cfg))


def main() -> None:
    register_configs()
    chosen = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("bits=")), list(BITS))
    extra = [a for a in sys.argv[1:] if not a.startswith("bits=")]
    print("| bits | method | execution | fid_cls | / FP32 | PSNR vs FP32 (dB) | eps_rel_err | quantize (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for bits in chosen:
        for name, overrides in METHODS.items():
            r = run(name, bits, overrides, extra)
            m = r["metrics"]
            fid, fid32, psnr = m["eval/fid_cls"], m["eval/fid_cls_fp32"], m["eval/psnr_vs_fp32"]
            print(f"| {bits} | {name} | {r['execution']} | {fid:.2f} | {fid / fid32:.2f} | "
                  f"{psnr if psnr is None else round(psnr, 1)} | {m['eval/eps_rel_err']:.4f} | {m['perf/quantize_s']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
