#!/usr/bin/env bash
# setup_fixture_env.sh: make the Python environment that scripts/make_fixtures.py (the test oracle) needs.
#
# Creates .venv at the repository root (git-ignored) with `python3 -m venv` and installs the pinned
# versions below from PyPI. Safe to run twice: when .venv already has exactly these versions, it
# does nothing.
#
# Run from anywhere:
#   scripts/setup_fixture_env.sh
#   .venv/bin/python scripts/make_fixtures.py          # regenerate tests/fixtures/
#   .venv/bin/python scripts/make_fixtures.py --check  # regenerate elsewhere, compare sha256
#
# PyPI's torch wheel for Linux pulls in the CUDA libraries (about 3 GB, a few minutes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

# The versions the committed fixtures were made with.
PINS=(
    torch==2.15.0
    transformers==5.24.0
    tokenizers==0.23.3
    numpy==2.4.6
    safetensors==0.8.0
)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Already there? Compare installed versions with the pins (local labels such as +cpu ignored).
if "$VENV/bin/python" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
EOF
then
    echo "ok: $VENV already has ${PINS[*]}"
    exit 0
fi

echo "installing ${PINS[*]} into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "${PINS[@]}"
"$VENV/bin/python" -c 'import torch, transformers, numpy, safetensors; print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}, safetensors {safetensors.__version__}")'
