#!/usr/bin/env bash
# README command 2: install, then run the tests in two tiers.
#   1. fast: unit tests on tiny random-weight models built in-process (tests/, about a minute);
#   2. notebooks: checks every chapters/*.ipynb matches its .py, executes every chapter with
#      papermill on small parameters (chapters/smoke_parameters.yml) on the embedded default
#      model, and builds the site from those outputs with warnings as errors.
# Each tier prints its wall time; the notebook tier has a time budget (NOTEBOOK_BUDGET_S).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
source "$ROOT/scripts/setup_env.sh"
echo "== setup: $(( $(date +%s) - start )) s"

t=$(date +%s)
"$PYTHON" -m pytest -q
echo "== fast tests: $(( $(date +%s) - t )) s"

t=$(date +%s)
"$PYTHON" -m pytest -q -m notebooks tests/test_notebooks.py
echo "== notebook tier (execute all chapters, smoke parameters): $(( $(date +%s) - t )) s"

t=$(date +%s)
bash scripts/build_site.sh
echo "== site build: $(( $(date +%s) - t )) s"
echo "== total: $(( $(date +%s) - start )) s"
