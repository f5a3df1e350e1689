#!/usr/bin/env bash
# The test command of the README and of CI: fetches the real models the tests use and installs
# Open MPI for the multi-rank tests (both safe to run again), then checks formatting, lints and
# runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/fetch_assets.sh
scripts/install_mpi.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
