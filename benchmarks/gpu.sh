#!/usr/bin/env bash
# The GPU figures of docs/guide.md#performance, in two parts that each fit in about 5 minutes on one
# H100 / H200. Writes the printed tables, JSON and the tests' output under OUTDIR (default ./gpu-results).
#
#     bash benchmarks/gpu.sh [OUTDIR] [main|compile|all]
#
# main (the default): the 150m llama step four ways, W_seed in float32 and in bf16; regeneration of
#     1e9 parameters on the GPU; a conv step; the test files with CUDA cases.
# compile: the same 150m step with each variant also under torch.compile (bf16 W_seed).
set -u
out=${1:-gpu-results}
part=${2:-main}
case "$part" in main|compile|all) ;; *) echo "part must be main, compile or all, got '$part'" >&2; exit 2;; esac
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    > "$out/device.txt" 2>&1 || { tail -n 1 "$out/device.txt"; exit 1; }
cat "$out/device.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
run() {  # name, seconds, command...: the printed output to OUTDIR/name.txt; a failure is noted and the run goes on
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1 || echo "failed (exit $?): $name" | tee -a "$out/failures.txt"
    tail -n 12 "$out/$name.txt"
}
lm=(python benchmarks/bench_lm.py --preset 150m --device cuda --warmup 2 --steps 5 --rounds 2)
if [ "$part" != compile ]; then
    run lm_150m_fp32 150 "${lm[@]}" --json "$out/lm_150m_fp32.json"
    run lm_150m_bf16 150 "${lm[@]}" --seed-dtype bfloat16 --json "$out/lm_150m_bf16.json"
    run regen 60 python benchmarks/bench_regen.py --devices cuda
    run step_conv 30 python benchmarks/bench_step.py --conv --device cuda --batch 256
    run tests 150 python -m pytest -q -x tests/test_distributions_*.py tests/test_fused.py tests/test_scaffold.py \
        tests/test_layer_types.py
fi
if [ "$part" != main ]; then
    run lm_150m_bf16_compile 330 "${lm[@]}" --seed-dtype bfloat16 --compile --json "$out/lm_150m_bf16_compile.json"
fi
