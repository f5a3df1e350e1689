#!/usr/bin/env bash
# bench_infer.sh: encoder inference, distil beside transformers on the same checkpoint and the same
# sentences, in one invocation. Not part of CI.
#
#   scripts/bench_infer.sh [--model DIR] [--rounds 3] [--repeats 3] [--limit N]
#
# Sentences: the Rotten Tomatoes sentiment test split (2,111 snippets, assets/rt-sentiment). Each
# round runs `distil bench` and then scripts/bench_infer.py (transformers, PyTorch) with the same
# protocol: a warm-up pass, then per repeat a batch-1 pass (one sentence at a time, tokenisation
# included, as the DistilBERT paper times inference) and a batch-32 pass (padded to the longest of
# each batch), both to the last hidden state, on every core. Then a table: the median over rounds
# of each side's batch-1 median sentence latency, batch-1 pass time and batch-32 throughput, and
# distil's speed divided by transformers'.
#
# Installs what it needs: the assets (scripts/fetch_assets.sh), .venv with torch and transformers
# (scripts/setup_fixture_env.sh), the release binary. Run on an otherwise idle machine. Raw results
# are kept in target/bench-infer/<time>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL=assets/all-MiniLM-L6-v2
ROUNDS=3
REPEATS=3
LIMIT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --model) MODEL=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --limit) LIMIT=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "bench_infer.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

scripts/fetch_assets.sh >/dev/null
scripts/setup_fixture_env.sh >/dev/null
cargo build --release --quiet
out=target/bench-infer/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
.venv/bin/python scripts/bench_infer.py --write-rt-test "$out/all.txt" >/dev/null
if [[ -n $LIMIT ]]; then head -n "$LIMIT" "$out/all.txt" >"$out/texts.txt"; else cp "$out/all.txt" "$out/texts.txt"; fi
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model $MODEL, $(wc -l <"$out/texts.txt") sentences, $ROUNDS rounds of $REPEATS repeats; results in $out"
for r in $(seq 1 "$ROUNDS"); do
    target/release/distil bench --model "$MODEL" --texts "$out/texts.txt" --repeats "$REPEATS" \
        --out "$out/distil-$r.json" >/dev/null
    .venv/bin/python scripts/bench_infer.py --model "$MODEL" --texts "$out/texts.txt" --repeats "$REPEATS" \
        --out "$out/transformers-$r.json"
    echo "round $r done"
done
.venv/bin/python - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def side(name):
    rs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
    ms = [r["models"][0] for r in rs]
    med = lambda xs: statistics.median(xs)
    return {
        "threads": rs[0]["threads"],
        "b1_ms": med([m["batch1_sentence_ms"] for m in ms]),
        "b1_pass": med([med(m["batch1_pass_s"]["runs"]) for m in ms]),
        "b32": med([m["batch32_sentences_per_s"] for m in ms]),
        "b32_tok": med([m["batch32_tokens_per_s"] for m in ms]),
        "spread_b1": (min(m["batch1_sentence_ms"] for m in ms), max(m["batch1_sentence_ms"] for m in ms)),
        "spread_b32": (min(m["batch32_sentences_per_s"] for m in ms), max(m["batch32_sentences_per_s"] for m in ms)),
    }
d, t = side("distil"), side("transformers")
print()
print("| | threads | batch 1: ms per sentence (median; round range) | batch 1: pass s | batch 32: sentences/s (range) | batch 32: real tokens/s |")
print("|---|---:|---:|---:|---:|---:|")
for name, s in (("distil", d), ("transformers", t)):
    print(f"| {name} | {s['threads']} | {s['b1_ms']:.2f} ({s['spread_b1'][0]:.2f}–{s['spread_b1'][1]:.2f}) | {s['b1_pass']:.2f} "
          f"| {s['b32']:.1f} ({s['spread_b32'][0]:.1f}–{s['spread_b32'][1]:.1f}) | {s['b32_tok']:.0f} |")
print(f"| distil ÷ transformers, speed | | {t['b1_ms'] / d['b1_ms']:.2f}x | {t['b1_pass'] / d['b1_pass']:.2f}x | {d['b32'] / t['b32']:.2f}x | |")
PY
