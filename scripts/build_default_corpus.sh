#!/usr/bin/env bash
# build_default_corpus.sh: the default corpus assets/corpus-minilm/ from the real English text
# that scripts/fetch_assets.sh puts in assets/text/ (WordNet glosses, fortunes, the Jargon File),
# tokenised with all-MiniLM-L6-v2's tokenizer, one sequence per line, 1% held out.
#
# Run from anywhere:   scripts/build_default_corpus.sh [more `distil corpus build` options]
# Safe to run again: the corpus is rebuilt and replaced whole (a failed build leaves the old one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_assets.sh
cargo build --release --quiet
target/release/distil corpus build --tokenizer assets/all-MiniLM-L6-v2 --input assets/text \
    --out assets/corpus-minilm "$@"
target/release/distil corpus stats assets/corpus-minilm
