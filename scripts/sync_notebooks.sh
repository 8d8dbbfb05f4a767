#!/usr/bin/env bash
# Regenerate every chapters/*.ipynb from its .py (the source of truth), without outputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
for py in "$ROOT"/chapters/*.py; do
  "$PYTHON" -m jupytext --quiet --update --to ipynb --output "${py%.py}.ipynb" "$py"
done
echo "regenerated $(ls "$ROOT"/chapters/*.py | wc -l) notebooks from chapters/*.py"
