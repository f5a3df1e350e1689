#!/usr/bin/env bash
# The default job: fetch the real models, build distil, and show what it does with them:
# describe all-MiniLM-L6-v2, compare sentence embeddings, and predict masked residues of an
# antibody with AntiBERTy's MLM head. Safe to run again; fetched models are reused.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_assets.sh
cargo build --release --quiet
distil=target/release/distil

echo; echo "== distil inspect assets/all-MiniLM-L6-v2"
$distil inspect assets/all-MiniLM-L6-v2

echo; echo "== sentence similarities (mean-pooled embeddings)"
printf '%s\n' "A man is playing a guitar." "Someone is strumming a guitar." "The stock market fell sharply today." \
    | $distil embed --model assets/all-MiniLM-L6-v2 --similarities

echo; echo "== distil fill-mask with AntiBERTy (masked residues of a heavy chain)"
$distil fill-mask --model assets/antiberty \
    "E V Q L [MASK] E S G G G L V Q P G G S L R L S C A A S G F T F S [MASK] Y A M S"
