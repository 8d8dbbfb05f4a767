#!/usr/bin/env bash
# Build the HTML site into book/_build/html/ from notebooks that papermill has ALREADY executed
# into book/chapters/ (Jupyter Book's own execution is off in _config.yml: it only renders).
#
#   scripts/build_site.sh                 # uses `python` on PATH (your active venv)
#   PYTHON=/path/to/venv/bin/python scripts/build_site.sh
#   scripts/build_site.sh --all           # extra arguments go to `jupyter-book build`
#
# Steps: vendor the browser assets (scripts/vendor_assets.sh, a no-op when already done), check
# that every chapter listed in _toc.yml has its executed notebook, then, from the repo root,
#   jupyter-book build book --config _config.yml --toc "$PWD/_toc.yml" --path-output book \
#     -W -n --keep-going
# (-W: warnings are errors; -n: nitpicky, broken cross-references warn; --keep-going: report all
# warnings, then fail). Exits non-zero on any failure.
# Two JB1 quirks make the plain `--toc _toc.yml` form insufficient: the --toc path is handed to
# Sphinx, which resolves a relative path against the source root book/ (-> book/_toc.yml, not
# found), so it is passed as an absolute path; and the output goes next to the _config.yml that
# JB finds (the repo root, i.e. ./_build) unless --path-output book puts it in book/_build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"

bash "$ROOT/scripts/vendor_assets.sh"

# Fail early, with a clear message, when a chapter in the TOC has not been executed yet.
"$PYTHON" - <<'EOF'
import sys
from pathlib import Path

import yaml

toc = yaml.safe_load(Path("_toc.yml").read_text())
files = []

def walk(node):
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for item in node:
            walk(item)

files.append(toc["root"])
walk({k: v for k, v in toc.items() if k != "root"})
missing = [
    f for f in files
    if not any((Path("book") / (f + ext)).exists() for ext in ("", ".md", ".ipynb"))
]
if missing:
    print("build_site: not found under book/: " + ", ".join(missing), file=sys.stderr)
    print("build_site: execute the chapters first, e.g.\n"
          "  papermill chapters/NN_name.ipynb book/chapters/NN_name.ipynb -k python3",
          file=sys.stderr)
    sys.exit(1)
EOF

start=$(date +%s)
# Always from scratch (a few seconds): an incremental build after a failed one reports success
# without re-reading the pages that warned.
rm -rf "$ROOT/book/_build"
# jupyter_book has no __main__; call its click entry point with the interpreter chosen above.
"$PYTHON" -c 'from jupyter_book.cli.main import main; main(prog_name="jupyter-book")' \
  build book --config "$ROOT/_config.yml" --toc "$ROOT/_toc.yml" --path-output book \
  -W -n --keep-going "$@"
echo "build_site: built book/_build/html/ in $(( $(date +%s) - start )) s"
