#!/usr/bin/env bash
# gpu_check.sh: the checks and measurements that need a CUDA GPU, in one run (for the device
# machine a task may be lent; not part of CI). Needs the CUDA toolkit (nvcc, cuBLAS, cuRAND,
# NVRTC) and the driver; NCCL for the nccl feature. Writes its log and figures under $OUT
# (default: target/gpu-check).
#
#   1. build with `--features nccl` (CUDA + NCCL), release;
#   2. tests/gpu.rs: forward parity with transformers' fixtures on the GPU, the loss and
#      gradients against the reference formulas, training on the GPU beside the CPU (f32, bf16);
#   3. the distillation step (benches/distill_step.rs) on the GPU, MiniLM-sized and
#      BERT-base-sized pairs, in f32 and bf16, with the GPU's memory use from nvidia-smi.
#
#   scripts/gpu_check.sh [--quick]     # --quick: the MiniLM pair only
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.csv" || {
    echo "no GPU: nvidia-smi failed" >&2
    exit 1
}
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit first" >&2; exit 1; }
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}

log "build (features nccl, compute capability $CUDA_COMPUTE_CAP)"
cargo build --release --features nccl --bins --benches --tests >"$OUT/build.log" 2>&1 || {
    tail -n 30 "$OUT/build.log"
    exit 1
}

log "tests/gpu.rs"
cargo test --release --features nccl --test gpu 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "^test |test result"

memory() { nvidia-smi --query-gpu=memory.used --format=csv,noheader | head -n 1; }
pairs=("minilm:assets/all-MiniLM-L6-v2:16")
if [[ ${1:-} != --quick ]]; then pairs+=("base:benches/configs/bert-base:8"); fi
for pair in "${pairs[@]}"; do
    IFS=: read -r name config batch <<<"$pair"
    for dtype in f32 bf16; do
        log "distillation step, $name pair, $dtype"
        cargo bench --features nccl --bench distill_step -- --device cuda:0 --dtype "$dtype" \
            --teacher-config "$config" --batch "$batch" --steps 10 2>&1 | tee -a "$OUT/steps.log" | tail -n 2 &
        bench=$!
        peak=0
        while kill -0 "$bench" 2>/dev/null; do
            used=$(memory | tr -dc 0-9)
            ((used > peak)) && peak=$used
            sleep 0.5
        done
        wait "$bench"
        log "  GPU memory in use at most $peak MiB"
    done
done
log "done; results in $OUT"
