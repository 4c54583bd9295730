"""PTQ vs QAT across bit widths on the default model: quality against FP32 and wall time to quantize.

    python benchmarks/ptq_vs_qat.py [bits=W4A8,W4A4] [hydra overrides applied to every run]

Both start from the same cached FP32 model; QAT's time includes its calibration and fine-tuning.
Each run's folder is kept under outputs/benchmarks/ptq_vs_qat/<method>-<bits>/.
"""
from __future__ import annotations

from common import run_table

METHODS = {
    "PTQ (histogram, dynamic inputs)": [],
    "PTQ (experiment=ptq_w4a8 recipe)": ["quant.recon.method=brecq", "quant.dynamic_input=false", "+quant.layer_bits={conv_out:8}"],
    "QAT (data + distillation)": ["quant=qat", "quant.qat.steps=800", "quant.qat.lr=5e-4", "quant.qat.schedule=cosine",
                                  "quant.qat.warmup_steps=50", "quant.qat.freeze_observer_step=400"],
}


def main() -> None:
    run_table("ptq_vs_qat", METHODS)


if __name__ == "__main__":
    main()
