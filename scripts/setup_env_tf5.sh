#!/usr/bin/env bash
# Create (or reuse) .venv-tf5: the book's requirements with transformers 5.x (what Colab runs)
# instead of requirements.txt's pinned 4.57.6, for the fast tier on both major versions. Sourced by
# test.sh; exports PYTHON_TF5. torch is pinned to 2.13.0 as in setup_env.sh (on the project's machines
# a local CPU wheel; an unpinned torch would pull GBs of CUDA wheels); pip picks the newest
# transformers 5 and the tokenizers, huggingface-hub and accelerate that go with it on the first run
# (later runs keep what is there: delete .venv-tf5 to move to a newer release). The site builder
# (jupyter-book) and datasets are left out: the fast tier needs neither.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
declare -F install_venv > /dev/null || source "$ROOT/scripts/setup_env.sh"  # install_venv (and .venv)
VENV_TF5="${VENV_TF5:-$ROOT/.venv-tf5}"
REQS_TF5="$(mktemp)"
grep -v -E '^(transformers|tokenizers|jupyter-book|datasets)([=<>! ]|$)' "$ROOT/requirements.txt" > "$REQS_TF5"
echo 'transformers>=5,<6' >> "$REQS_TF5"
install_venv "$VENV_TF5" "$REQS_TF5"
rm -f "$REQS_TF5"
export PYTHON_TF5="$VENV_TF5/bin/python"
