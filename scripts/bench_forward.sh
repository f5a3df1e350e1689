#!/usr/bin/env bash
# Forward throughput of all-MiniLM-L6-v2 at batch 32 x 128: distil, then PyTorch (transformers)
# when the fixture environment (.venv, from scripts/setup_fixture_env.sh) exists. Not part of CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_assets.sh
cargo bench --bench forward --quiet -- "$@"
if [[ -x .venv/bin/python ]]; then
    .venv/bin/python scripts/bench_forward.py "$@"
else
    echo "PyTorch side skipped: run scripts/setup_fixture_env.sh to install torch and transformers"
fi
