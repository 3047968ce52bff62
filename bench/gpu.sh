#!/usr/bin/env bash
# The GPU measurements (bench/README.md "GPU"), as one script for a short session on a GPU
# machine: the bf16 GEMM peak, the paper config's training step in bf16 and f32 with the GPU
# memory it holds, PyTorch's step on the same GPU (bf16 autocast, if torch and transformers
# are importable), and the wall time of `reproduce --preset small` (cut at REPRODUCE_S
# seconds; its log then shows how far it got).
#
#   bench/gpu.sh XTASK OUT        # XTASK: an xtask binary built with --features cuda
#
# Results go to OUT: *.json from the benchmarks, mem-*.txt (MiB in use, sampled every
# 200 ms by nvidia-smi while each command runs), reproduce.log, summary.txt.
# Environment: DEVICE (default cuda:0), STEPS (timed steps per benchmark, default 10),
# REPRODUCE_S (default 420; 0 skips it), PYTHON (default python3).
set -euo pipefail

xtask=${1:?usage: bench/gpu.sh XTASK OUT}
out=${2:?usage: bench/gpu.sh XTASK OUT}
device=${DEVICE:-cuda:0}
steps=${STEPS:-10}
reproduce_s=${REPRODUCE_S:-420}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"

# Runs "$@" with stdout to $out/$1.json (or .log) while sampling the GPU's memory in use.
measure() {
    local name=$1 ext=$2
    shift 2
    local sampler=
    if command -v nvidia-smi > /dev/null && [[ $device == cuda* ]]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
            > "$out/mem-$name.txt" &
        sampler=$!
    fi
    local start=$SECONDS status=0
    "$@" > "$out/$name.$ext" 2> "$out/$name.err" || status=$?
    [[ -n $sampler ]] && { kill "$sampler" 2> /dev/null || true; }
    local peak=
    [[ -s $out/mem-$name.txt ]] && peak=$(sort -n "$out/mem-$name.txt" | tail -1)
    echo "$name: exit $status, $((SECONDS - start)) s, peak GPU memory in use ${peak:-n/a} MiB" \
        | tee -a "$summary"
}

if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$summary"
fi
measure gemm-bf16 json "$xtask" bench gemm --device "$device" --precision bf16 --json
measure gemm-f32 json "$xtask" bench gemm --device "$device" --json
peak=$(sed -n 's/.*"peak_gflops": \([0-9.]*\).*/\1/p' "$out/gemm-bf16.json")
measure train-paper-bf16 json "$xtask" bench train --config paper --batch 32 \
    --steps "$steps" --device "$device" --precision bf16 --gemm-peak "${peak:-1}" --json
measure train-paper-f32 json "$xtask" bench train --config paper --batch 32 \
    --steps "$steps" --device "$device" --json
if "$python" -c "import torch, transformers" 2> /dev/null; then
    measure torch-paper-bf16 json "$python" "$here/torch_lxmert.py" --batch 32 \
        --steps "$steps" --device "$device" --bf16
    measure torch-paper-f32 json "$python" "$here/torch_lxmert.py" --batch 32 \
        --steps "$steps" --device "$device"
fi
for f in "$out"/train-paper-*.json "$out"/torch-paper-*.json; do
    [[ -s $f ]] || continue
    sps=$(grep -A1 '"samples_per_s"' "$f" | sed -n 's/.*"median": \([0-9.]*\).*/\1/p' | head -1 || true)
    echo "$(basename "$f" .json): ${sps:-?} samples/s (median)" | tee -a "$summary"
done
if [[ $reproduce_s -gt 0 ]]; then
    measure reproduce-small log timeout "$reproduce_s" "$xtask" reproduce --preset small \
        --device "$device" --precision bf16 --out "$out/reproduce-small"
fi
