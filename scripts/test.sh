#!/usr/bin/env bash
# README command 2: install, then run the tests in three tiers.
#   1. fast: unit tests on tiny random-weight models built in-process, plus the check that every
#      chapters/*.ipynb is generated from its .py (seconds); run twice: on the book's pinned
#      transformers 4.57.6 (.venv) and on transformers 5.x (.venv-tf5, scripts/setup_env_tf5.sh);
#   2. slow: the embedded models loaded for real (tests/test_embedded_models.py), then every
#      chapter executed with papermill on small parameters (chapters/smoke_parameters.yml) on the
#      embedded default model, then the placebo of chapter 3's headline claim (random heads must
#      not pass its gate), then the site built from those outputs with warnings as errors;
#   3. browser: every page of the built site loaded in headless Chromium with the network off
#      (maths typeset, figures and widgets shown, no failed or external asset loads).
# Each tier prints its wall time; chapter execution has a time budget (NOTEBOOK_BUDGET_S, seconds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
source "$ROOT/scripts/setup_env.sh"
echo "== setup: $(( $(date +%s) - start )) s"

t=$(date +%s)
"$PYTHON" -m pytest -q
echo "== fast tests (transformers $("$PYTHON" -c 'import transformers; print(transformers.__version__)')): $(( $(date +%s) - t )) s"

# The fast tier again on transformers 5 (what Colab runs), in its own environment .venv-tf5.
t=$(date +%s)
source "$ROOT/scripts/setup_env_tf5.sh"
TF5_VERSION="$("$PYTHON_TF5" -c 'import transformers; print(transformers.__version__)')"
echo "== setup of .venv-tf5 (transformers $TF5_VERSION): $(( $(date +%s) - t )) s"
t=$(date +%s)
"$PYTHON_TF5" -m pytest -q -p no:cacheprovider
echo "== fast tests (transformers $TF5_VERSION): $(( $(date +%s) - t )) s"

t=$(date +%s)
"$PYTHON" -m pytest -q -m "embedded or notebooks" tests/test_embedded_models.py tests/test_notebooks.py
echo "== slow tier (embedded models; all chapters executed on smoke parameters): $(( $(date +%s) - t )) s"

# The placebo: random single heads labelled "the top head" must pass chapter 3's headline claim in at
# most 10% of 50 draws (scripts/placebo_top_head.py exits 1 above that, or if the gate is never reached).
t=$(date +%s)
"$PYTHON" scripts/placebo_top_head.py
echo "== placebo of chapter 3's headline claim: $(( $(date +%s) - t )) s"

t=$(date +%s)
bash scripts/build_site.sh
echo "== site build: $(( $(date +%s) - t )) s"

t=$(date +%s)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
command -v chromium >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
"$PYTHON" -m pytest -q -rP -m browser tests/test_site_browser.py
echo "== site in headless Chromium, network off (screenshots in book/_build/screenshots/): $(( $(date +%s) - t )) s"
echo "== total: $(( $(date +%s) - start )) s"
