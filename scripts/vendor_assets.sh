#!/usr/bin/env bash
# Vendor the JavaScript (and the fonts it loads) that the built pages need in the reader's
# browser, so that no page loads anything from a CDN:
#   - MathJax 3 (es5/tex-chtml.js, its CHTML woff fonts, the TeX extensions its autoload
#     component fetches on first use of a macro such as \boldsymbol or \cancel),
#   - require.js (needed by the ipywidgets embed script),
#   - @jupyter-widgets/html-manager embed-amd.js (renders widget state saved by papermill), plus
#     the Font Awesome fonts its bundled CSS points at.
# Output: book/_vendor/ (gitignored). _config.yml points html_static_path, mathjax_path and
# nb_ipywidgets_js at it; Sphinx copies the folder's contents to _build/html/_static/.
#
# Idempotent: when book/_vendor/.vendored already records these exact versions and every kept
# file is present, nothing is fetched (so a rebuild needs no network). Otherwise the three
# packages are fetched with `npm pack` (npm registry only), their sha512 integrity is checked
# against the values pinned below, and the folder is rebuilt from scratch and swapped in.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/book/_vendor"
STAMP="$DEST/.vendored"

HTML_MANAGER_VERSION=1.0.6
REQUIREJS_VERSION=2.3.4
MATHJAX_VERSION=3.2.2
# `npm view PKG@VERSION dist.integrity`
declare -A INTEGRITY=(
  ["@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION"]="sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ=="
  ["requirejs@$REQUIREJS_VERSION"]="sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A=="
  ["mathjax@$MATHJAX_VERSION"]="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
)
WANT="html-manager@$HTML_MANAGER_VERSION requirejs@$REQUIREJS_VERSION mathjax@$MATHJAX_VERSION layout=3"

# Files the pages reference directly (the rest are found by the checks after extraction).
REQUIRED=(
  mathjax/tex-chtml.js
  mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff
  mathjax/input/tex/extensions/boldsymbol.js
  requirejs/require.js
  jupyter-widgets/embed-amd.js
  jupyter-widgets/require-paths.js
)

report_size() {
  local kb files
  kb=$(du -sk "$DEST" | cut -f1)
  files=$(find "$DEST" -type f ! -name '.vendored' | wc -l)
  echo "vendor_assets: book/_vendor holds $files files, $kb KiB ($(du -sh "$DEST" | cut -f1))"
}

up_to_date() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] || return 1
  local f
  for f in "${REQUIRED[@]}"; do [[ -s "$DEST/$f" ]] || return 1; done
}

if up_to_date; then
  echo "vendor_assets: up to date ($WANT)"
  report_size
  exit 0
fi

for tool in npm openssl tar; do
  command -v "$tool" >/dev/null || { echo "vendor_assets: $tool is required (apt-get install $tool)" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
STAGE="$TMP/stage"
mkdir -p "$STAGE" "$TMP/packs"

for spec in "${!INTEGRITY[@]}"; do
  # npm pack prints the tarball's file name on stdout; its notices go to stderr (kept in a log).
  if ! tgz=$(cd "$TMP/packs" && npm pack --silent "$spec" 2>>"$TMP/npm.log" | tail -n 1); then
    cat "$TMP/npm.log" >&2
    echo "vendor_assets: npm pack $spec failed" >&2
    exit 1
  fi
  got="sha512-$(openssl dgst -sha512 -binary "$TMP/packs/$tgz" | base64 -w0)"
  if [[ "$got" != "${INTEGRITY[$spec]}" ]]; then
    echo "vendor_assets: integrity mismatch for $spec: got $got" >&2
    exit 1
  fi
  name="${spec%@*}"; name="${name##*/}"
  mkdir -p "$TMP/x/$name"
  tar -xzf "$TMP/packs/$tgz" -C "$TMP/x/$name"
done

# --- MathJax: the tex-chtml component, its fonts, and the TeX extensions autoload may fetch.
MJ="$TMP/x/mathjax/package"
mkdir -p "$STAGE/mathjax/output/chtml/fonts" "$STAGE/mathjax/input/tex/extensions"
cp "$MJ/es5/tex-chtml.js" "$STAGE/mathjax/"
cp -r "$MJ/es5/output/chtml/fonts/woff-v2" "$STAGE/mathjax/output/chtml/fonts/"
# all-packages.js is only used by the *-full combined components, never fetched by autoload.
find "$MJ/es5/input/tex/extensions" -maxdepth 1 -name '*.js' ! -name 'all-packages.js' \
  -exec cp {} "$STAGE/mathjax/input/tex/extensions/" \;
cp "$MJ/LICENSE" "$STAGE/mathjax/LICENSE"

# --- require.js (MIT; the licence header is in the file itself).
mkdir -p "$STAGE/requirejs"
cp "$TMP/x/requirejs/package/require.js" "$STAGE/requirejs/"

# --- ipywidgets embedder. embed-amd.js bundles the widget CSS; webpack resolves the Font Awesome
# font URLs relative to the script's own folder, so the woff2/woff files sit beside it. Browsers
# take the woff2 entry of the @font-face rule; eot/ttf/svg fallbacks are for browsers the theme
# does not support anyway.
HM="$TMP/x/html-manager/package"
mkdir -p "$STAGE/jupyter-widgets"
cp "$HM/dist/embed-amd.js" "$HM/LICENSE" "$STAGE/jupyter-widgets/"
find "$HM/dist" -maxdepth 1 \( -name '*.woff2' -o -name '*.woff' \) -exec cp {} "$STAGE/jupyter-widgets/" \;

# @jupyter-widgets/base 6 typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue); with
# MathJax 3 on the page that throws "Cannot read properties of undefined (reading 'Queue')" while
# a widget renders. Patch that one call (exactly one occurrence in this pinned, checksummed file)
# to use MathJax 3's typesetPromise when there is no Hub.
"${PYTHON:-python3}" - "$STAGE/jupyter-widgets/embed-amd.js" <<'PY'
import sys
path = sys.argv[1]
src = open(path, encoding="utf-8").read()
old = 'void 0!==window.MathJax&&MathJax.Hub.Queue(["Typeset",MathJax.Hub,e])'
new = ('void 0!==window.MathJax&&(MathJax.Hub?MathJax.Hub.Queue(["Typeset",MathJax.Hub,e])'
       ':MathJax.startup&&MathJax.startup.promise&&(MathJax.startup.promise='
       'MathJax.startup.promise.then((()=>MathJax.typesetPromise([e])))))')
if src.count(old) != 1:
    sys.exit(f"vendor_assets: expected one MathJax 2 typeset call in embed-amd.js, found {src.count(old)}")
open(path, "w", encoding="utf-8").write(src.replace(old, new))
PY

# embed-amd.js defines its AMD modules by name ("@jupyter-widgets/html-manager/dist/libembed-amd",
# ...) and webpack derives each module's asset folder from the URL require.js gives that name:
# by default <page folder>/@jupyter-widgets/html-manager/dist/, where nothing is served (404s for
# the fonts, and broken Font Awesome icons on widget pages). This file, loaded between require.js
# and embed-amd.js (see nb_ipywidgets_js in _config.yml), maps those names to this folder.
cat > "$STAGE/jupyter-widgets/require-paths.js" <<'JS'
/* Generated by scripts/vendor_assets.sh: point the widget modules' asset URLs at this folder. */
(function () {
  var base = document.currentScript.src.replace(/[?#].*$/, "").replace(/[^\/]*$/, "");
  window.__jupyter_widgets_assets_path__ = base;
  window.require.config({
    paths: {
      "@jupyter-widgets/base": base + "base",
      "@jupyter-widgets/controls": base + "controls",
      "@jupyter-widgets/html-manager": base + "html-manager",
      "@jupyter-widgets/html-manager/dist/libembed-amd": base + "libembed-amd"
    }
  });
})();
JS

# Sanity checks on what was kept.
for f in "${REQUIRED[@]}"; do
  [[ -s "$STAGE/$f" ]] || { echo "vendor_assets: missing $f after extraction" >&2; exit 1; }
done
for fontref in $(grep -o '[0-9a-f]\{20\}\.woff2\?' "$STAGE/jupyter-widgets/embed-amd.js" | sort -u); do
  [[ -f "$STAGE/jupyter-widgets/$fontref" ]] || { echo "vendor_assets: embed-amd.js needs $fontref" >&2; exit 1; }
done

echo "$WANT" > "$STAGE/.vendored"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$STAGE" "$DEST"
echo "vendor_assets: vendored $WANT"
report_size
