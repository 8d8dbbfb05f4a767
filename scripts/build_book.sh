#!/usr/bin/env bash
# README command 1: install, execute every chapter on the embedded default model, build the site.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
source "$ROOT/scripts/setup_env.sh"
echo "setup: $(( $(date +%s) - start )) s"
"$PYTHON" scripts/run_chapters.py --profile full
bash scripts/build_site.sh
echo "build_book: done in $(( $(date +%s) - start )) s; open book/_build/html/index.html"
