"""PTQ methods x bit widths on the default model: quality against FP32 and time to quantize.

    python benchmarks/ptq_methods.py [bits=W4A8,W4A4] [hydra overrides applied to every run]

Runs the real pipeline (the FP32 model, classifier and reference samples come from the cache, so
only the first run trains) and prints a markdown table, one row as each run finishes. Each run's
folder is kept under outputs/benchmarks/ptq_methods/<method>-<bits>/.
"""

from __future__ import annotations

from common import run_table

METHODS = {
    "naive: min-max, per-tensor, static": ["quant.observer=minmax", "quant.granularity=per_tensor", "quant.dynamic_input=false"],
    "histogram, per-channel, static": ["quant.dynamic_input=false"],
    "+ dynamic inputs (default)": [],
    "+ AdaRound": ["quant.recon.method=adaround"],
    "+ BRECQ": ["quant.recon.method=brecq"],
    "+ BRECQ + split shortcut": ["quant.recon.method=brecq", "quant.split_shortcut=true"],
}


def main() -> None:
    run_table("ptq_methods", METHODS)


if __name__ == "__main__":
    main()
