#!/usr/bin/env bash
# Sweep quantization settings with Hydra's multirun.
#   ./multirun.sh                      the example grid: PTQ at 4/6/8-bit weights on fbgemm and qnnpack
#                                      (6 jobs, one after the other)
#   ./multirun.sh GRID [overrides...]  a named grid of conf/sweep/: bits (8 jobs), qconfig (12), methods (6),
#                                      backends (6), optuna (an Optuna search); on the joblib launcher with
#                                      $N_JOBS parallel workers (default 2), unless the overrides name a
#                                      launcher (hydra/launcher=slurm | submitit_local | basic)
#   ./multirun.sh overrides...         any grid: the arguments go to `diffquant -m`
# The FP32 model is trained once per sweep (cache lock); the summary lands in the sweep folder
# (summary.csv / summary.md / summary.png). $DIFFQUANT replaces the `diffquant` command.
# Examples: ./multirun.sh bits backend=qnnpack        N_JOBS=4 ./multirun.sh qconfig
#           ./multirun.sh bits hydra/launcher=slurm hydra.launcher.partition=cpu
set -euo pipefail
cd "$(dirname "$0")"
if [ "$#" -eq 0 ]; then
  set -- quant=ptq quant.weight_bits=4,6,8 backend=fbgemm,qnnpack
elif [ -f "conf/sweep/$1.yaml" ]; then
  grid="$1"
  shift
  launcher=(hydra/launcher=joblib "hydra.launcher.n_jobs=${N_JOBS:-2}")
  for arg in "$@"; do
    case "$arg" in hydra/launcher=*) launcher=() ;; esac
  done
  set -- "sweep=$grid" ${launcher[@]+"${launcher[@]}"} "$@"
fi
# shellcheck disable=SC2086  # $DIFFQUANT may be a command with arguments (python -m diffquant.run)
exec ${DIFFQUANT:-diffquant} -m "$@"
