#!/usr/bin/env bash
# bench_step.sh: one distillation step, distil next to PyTorch, on this machine. Not part of CI.
#
#   scripts/bench_step.sh [--sizes minilm,base] [--rounds 3] [--steps 5] [--batch B --seq S] [--no-distil]
#                         [--ceiling-n 4096]
#
# For each size, R rounds, each round running in turn:
#   distil         cargo bench --bench distill_step -- --batch B --seq S --steps N --teacher-config DIR
#   PyTorch        .venv/bin/python scripts/bench_step.py --size SIZE ...   (distiller.py's step, ported;
#                  glibc's allocator as users have it)
#   PyTorch tuned  the same with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 (glibc keeps freed
#                  memory instead of returning it to the kernel and faulting it in again every step)
# Each run does one untimed warm-up step, then N timed steps, and reports their median. The distil and
# plain PyTorch runs get neither malloc variable, whatever the calling shell has set.
# Then a Markdown table per size: median step time (median over the rounds of each run's median), the
# spread of the run medians, tokens/s (real, non-padding tokens), peak resident memory, GFLOP/s achieved
# (matrix-product FLOPs of the step, `bench_step.py --flops`, over the median step time), that as a
# share of the machine's float32 matrix-product ceiling (4096^3 sgemm with numpy's OpenBLAS and torch,
# measured once at the start), and distil's time and memory divided by each row's.
#
# Sizes (random weights, nothing downloaded; student = teacher's layers spread evenly):
#   minilm  teacher 6 x 384, 12 heads, FFN 1536, vocabulary 30522 -> 3 layers; 16 x 128 tokens
#           (distil's side reads assets/all-MiniLM-L6-v2/config.json: scripts/fetch_assets.sh)
#   base    teacher 12 x 768, 12 heads, FFN 3072 (BERT-base) -> 6 layers; 8 x 128 tokens
#           (distil's side reads a BERT-base config.json written to a temporary folder)
# --batch/--seq override the batch of every size; --no-distil runs the PyTorch side alone; for a quick
# check that everything runs: --batch 2 --seq 16 --steps 1 --rounds 1 --ceiling-n 512.
#
# Needs: .venv with torch and transformers (scripts/setup_fixture_env.sh), cargo (the bench is built
# once, first, with `cargo bench --no-run`). Run it on an otherwise idle machine: every core is used.
# Raw results (JSON lines) are kept in target/bench-step/results-<time>.jsonl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES=minilm,base
ROUNDS=3
STEPS=5
BATCH=
SEQ=
DISTIL=1
CEILING_N=4096
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sizes) SIZES="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seq) SEQ="$2"; shift 2 ;;
        --no-distil) DISTIL=0; shift ;;
        --ceiling-n) CEILING_N="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see $0 --help)" >&2; exit 2 ;;
    esac
done

PY=.venv/bin/python
if [[ ! -x "$PY" ]] || ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
    echo "no .venv with torch and transformers: run scripts/setup_fixture_env.sh first" >&2
    exit 1
fi

mkdir -p target/bench-step
RESULTS="target/bench-step/results-$(date +%Y%m%d-%H%M%S).jsonl"
: > "$RESULTS"

teacher_config() {
    case "$1" in
        minilm) echo "assets/all-MiniLM-L6-v2" ;;
        base) echo "benches/configs/bert-base" ;;   # BERT-base's config.json
        *) echo "unknown size $1 (minilm or base)" >&2; exit 2 ;;
    esac
}

IFS=, read -r -a SIZE_LIST <<< "$SIZES"
for size in "${SIZE_LIST[@]}"; do teacher_config "$size" > /dev/null; done

if [[ $DISTIL == 1 ]]; then
    if [[ " ${SIZE_LIST[*]} " == *" minilm "* && ! -f assets/all-MiniLM-L6-v2/config.json ]]; then
        scripts/fetch_assets.sh
    fi
    echo "building the distil step benchmark (cargo bench --no-run)" >&2
    cargo bench --bench distill_step --no-run --quiet
fi

echo "measuring the float32 matrix-product ceiling (${CEILING_N}^3)" >&2
"$PY" - "$("$PY" scripts/bench_step.py --ceiling --n "$CEILING_N")" >> "$RESULTS" <<'EOF'
import json, sys
print(json.dumps({"kind": "ceiling", **json.loads(sys.argv[1])}))
EOF

# record SIZE VARIANT ROUND OUTPUT: appends one result line (PyTorch: its JSON; distil: its raw text).
record() {
    "$PY" - "$@" >> "$RESULTS" <<'EOF'
import json, sys
size, variant, rnd, out = sys.argv[1:5]
rec = {"kind": "run", "size": size, "variant": variant, "round": int(rnd)}
if variant == "distil":
    rec["raw"] = out
else:
    lines = [l for l in out.splitlines() if l.startswith("{")]
    rec["result"] = json.loads(lines[-1]) if lines else None
    if not lines:
        rec["raw"] = out
print(json.dumps(rec))
EOF
}

for size in "${SIZE_LIST[@]}"; do
    size_args=(--size "$size")
    [[ -n $BATCH ]] && size_args+=(--batch "$BATCH")
    [[ -n $SEQ ]] && size_args+=(--seq "$SEQ")
    flops=$("$PY" scripts/bench_step.py "${size_args[@]}" --flops)
    "$PY" -c 'import json,sys; print(json.dumps({"kind": "flops", **json.loads(sys.argv[1])}))' "$flops" >> "$RESULTS"
    read -r B S < <("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["batch"], r["seq"])' "$flops")
    cfg=$(teacher_config "$size")
    for ((r = 1; r <= ROUNDS; r++)); do
        if [[ $DISTIL == 1 ]]; then
            echo "[$size round $r/$ROUNDS] distil" >&2
            out=$(env -u MALLOC_MMAP_MAX_ -u MALLOC_TRIM_THRESHOLD_ \
                cargo bench --quiet --bench distill_step -- --batch "$B" --seq "$S" --steps "$STEPS" \
                --teacher-config "$cfg" 2>&1) || { echo "$out" >&2; echo "distil's bench failed" >&2; exit 1; }
            echo "  $(grep -E '^(distil step:|\{)' <<< "$out" | tail -n 1)" >&2
            record "$size" distil "$r" "$out"
        fi
        echo "[$size round $r/$ROUNDS] pytorch" >&2
        out=$(env -u MALLOC_MMAP_MAX_ -u MALLOC_TRIM_THRESHOLD_ \
            "$PY" scripts/bench_step.py "${size_args[@]}" --steps "$STEPS" 2>&1) || { echo "$out" >&2; exit 1; }
        echo "  $(tail -n 1 <<< "$out")" >&2
        record "$size" pytorch "$r" "$out"
        echo "[$size round $r/$ROUNDS] pytorch, malloc tuned" >&2
        out=$(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
            "$PY" scripts/bench_step.py "${size_args[@]}" --steps "$STEPS" 2>&1) || { echo "$out" >&2; exit 1; }
        echo "  $(tail -n 1 <<< "$out")" >&2
        record "$size" pytorch-tuned "$r" "$out"
    done
done

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo); $("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')"
"$PY" scripts/bench_step.py --report "$RESULTS"
echo
echo "raw results: $RESULTS"
