"""PTQ vs QAT across bit widths on the default model: quality against FP32 and wall time to quantize.

    python benchmarks/ptq_vs_qat.py [bits=W4A8,W4A4] [hydra overrides applied to every run, e.g. device=cuda]

Both start from the same cached FP32 model; QAT's time includes its calibration and fine-tuning.
Each run's folder is kept under outputs/benchmarks/ptq_vs_qat/<method>-<bits>/.
"""

from __future__ import annotations

from common import run_table

QAT_STEPS = ["quant.qat.steps=1500", "quant.qat.lr=1e-4", "quant.qat.schedule=cosine", "quant.qat.warmup_steps=100"]
METHODS = {
    "PTQ (histogram, dynamic inputs)": [],
    "PTQ (experiment=ptq_w4a8 recipe)": ["experiment=ptq_w4a8"],
    "QAT (data + distillation)": ["quant=qat", *QAT_STEPS, "quant.qat.freeze_observer_step=750"],
    "QAT (experiment=qat_w4a8: LSQ)": ["quant=qat", "experiment=qat_w4a8", *QAT_STEPS],
    "QAT (experiment=qat_w4a4: per-timestep scales, learned step sizes)": ["quant=qat", "experiment=qat_w4a4"],
}


def main() -> None:
    run_table("ptq_vs_qat", METHODS)


if __name__ == "__main__":
    main()
