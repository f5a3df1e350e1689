#!/usr/bin/env bash
# The test command of the README and of CI: fetches the real models the tests use (safe to run
# again), then checks formatting, lints and runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_assets.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
