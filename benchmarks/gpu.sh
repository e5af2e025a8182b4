#!/usr/bin/env bash
# The GPU figures of docs/guide.md#performance in one run (about 8 minutes on one H100 / H200):
# the 150m LM step four ways (W_seed in float32 and in bf16; then each compiled), regeneration of
# 1e9 parameters on the GPU, and the test files with CUDA cases. Writes the printed tables, JSON
# and the tests' output under OUTDIR (default ./gpu-results).
#
#     bash benchmarks/gpu.sh [OUTDIR]
set -u
out=${1:-gpu-results}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    > "$out/device.txt" 2>&1 || { tail -n 1 "$out/device.txt"; exit 1; }
cat "$out/device.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
run() {  # name, command...: the printed output to OUTDIR/name.txt, a failure noted and the run goes on
    local name=$1; shift
    echo "== $name: $*"
    timeout 900 "$@" > "$out/$name.txt" 2>&1 || echo "failed (exit $?): $name" | tee -a "$out/failures.txt"
    tail -n 12 "$out/$name.txt"
}
run lm_150m_fp32 python benchmarks/bench_lm.py --preset 150m --device cuda --warmup 2 --steps 6 --rounds 2 \
    --json "$out/lm_150m_fp32.json"
run lm_150m_bf16 python benchmarks/bench_lm.py --preset 150m --device cuda --warmup 2 --steps 6 --rounds 2 \
    --seed-dtype bfloat16 --compile --json "$out/lm_150m_bf16.json"
run regen python benchmarks/bench_regen.py --params 1e9 --v1-params 3e7 --layer 4096
run step_conv python benchmarks/bench_step.py --conv --device cuda --batch 256
run tests python -m pytest -q -x tests/test_distributions.py tests/test_fused.py tests/test_scaffold.py \
    tests/test_layer_types.py tests/test_train.py
