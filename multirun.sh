#!/usr/bin/env bash
# Sweep quantization settings with Hydra's multirun. Arguments are passed to `diffquant -m`;
# with none, runs the example grid: PTQ at 4/6/8-bit weights on fbgemm and qnnpack (6 jobs,
# one FP32 training shared through the cache). Results: outputs/multirun/<date>/<time>/<job>/.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$#" -eq 0 ]; then
  set -- quant=ptq quant.weight_bits=4,6,8 backend=fbgemm,qnnpack
fi
exec diffquant -m "$@"
