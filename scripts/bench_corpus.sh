#!/usr/bin/env bash
# bench_corpus.sh: how fast `distil corpus build` turns text into a corpus, next to the Python
# `tokenizers` package encoding the same lines with the same tokenizer.json, and how much memory a
# build takes on a corpus several times larger than that memory. Not part of CI.
#
#   scripts/bench_corpus.sh [REPEAT]
#
# 1. Throughput on the default corpus text (assets/text, about 12.7 MB, line mode, all cores):
#    distil timed end to end (reading, tokenising, cleaning, writing and syncing the shards);
#    Python timed around encode_batch only (scripts/bench_corpus.py). Both are given as MB of text
#    per second and tokens per second (tokens: the text tokens, without start and end tokens).
# 2. Peak memory (maximum resident set size, /usr/bin/time -v) of that build and of a build over
#    the same text repeated REPEAT times (default 64: about 800 MB of text), which must stay flat.
#
# Needs: the assets (scripts/fetch_assets.sh), a release build, .venv with tokenizers (installed
# here if missing: `tokenizers==0.23.3` only), GNU time (installed with apt-get if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPEAT="${1:-64}"

scripts/fetch_assets.sh
cargo build --release --quiet
distil=target/release/distil

if [[ ! -x /usr/bin/time ]]; then
    sudo=(); [[ $EUID -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq time
fi
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import tokenizers" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check tokenizers==0.23.3
fi

WORK="$(mktemp -d "$PWD/target/bench-corpus.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
TEXT=(assets/text/wordnet.txt assets/text/fortunes.txt assets/text/jargon.txt)
cat "${TEXT[@]}" > "$WORK/text.txt"
BYTES=$(stat -c %s "$WORK/text.txt")

# peak_build NAME INPUT: runs distil corpus build under GNU time; prints "seconds peak_kb".
peak_build() {
    /usr/bin/time -v -o "$WORK/$1.time" "$distil" corpus build --tokenizer assets/all-MiniLM-L6-v2 \
        --input "$2" --out "$WORK/$1" 2> "$WORK/$1.log"
    local wall peak
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$WORK/$1.time")
    peak=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$1.time")
    echo "$wall $peak"
}

echo "== throughput: $(numfmt --to=si "$BYTES")B of text, $(nproc) cores"
cat "$WORK/text.txt" > /dev/null   # warm the page cache for both sides
PY=$(.venv/bin/python scripts/bench_corpus.py assets/all-MiniLM-L6-v2/tokenizer.json "$WORK/text.txt")
TOKENS=$(.venv/bin/python -c 'import json,sys; print(json.loads(sys.argv[1])["tokens"])' "$PY")
read -r SECS PEAK1 < <(peak_build small "$WORK/text.txt")
tail -n 1 "$WORK/small.log"
awk -v b="$BYTES" -v t="$TOKENS" -v s="$SECS" 'BEGIN {printf "distil corpus build       %6.2f MB/s  %9.0f tokens/s  (%.2f s end to end, %d tokens)\n", b/1e6/s, t/s, s, t}'
.venv/bin/python -c 'import json,sys; r=json.loads(sys.argv[1]); print("python tokenizers         %6.2f MB/s  %9.0f tokens/s  (%.2f s in encode_batch alone)" % (r["mb_per_s"], r["tokens_per_s"], r["seconds"]))' "$PY"

echo "== peak memory: the same text repeated $REPEAT times"
for _ in $(seq "$REPEAT"); do cat "$WORK/text.txt"; done > "$WORK/big.txt"
BIG=$(stat -c %s "$WORK/big.txt")
read -r BIGSECS PEAKN < <(peak_build big "$WORK/big.txt")
tail -n 1 "$WORK/big.log"
awk -v p1="$PEAK1" -v pn="$PEAKN" -v b="$BIG" -v s="$BIGSECS" -v r="$REPEAT" 'BEGIN {
    printf "peak RSS  %6.1f MB for 1 copy, %6.1f MB for %d copies (%.0f MB of text, %.1f times the peak; %.2f MB/s)\n",
        p1/1024, pn/1024, r, b/1e6, b/(pn*1024), b/1e6/s }'
