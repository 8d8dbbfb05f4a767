"""The built site as a reader's browser shows it, offline (scripts/check_site.py).

Marked `browser` (not in the fast tier): run after scripts/build_site.sh with
    python -m pytest -q -rP -m browser tests/test_site_browser.py
Needs the Debian package `chromium` (apt-get install -y chromium); skipped, with that reason,
without it, and the site test is skipped until the site is built. Screenshots of every page go to
book/_build/screenshots/ (their paths are printed; -rP shows them for a passing test).
"""
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_site  # noqa: E402

SITE = ROOT / "book" / "_build" / "html"
SCREENSHOTS = ROOT / "book" / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium"),
]

ONE_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201ffa65a2d"
    "a50000000049454e44ae426082"
)
BROKEN_PAGE = """<!doctype html><html><head><script>console.error("boom")</script>
<script src="https://cdn.example.com/lib.js"></script></head><body><article>
<p>Raw maths that nothing typeset: $$x^2$$</p>
<div class="cell"><div class="cell_output"><img src="ok.png"><img src="missing.png">
<script type="application/vnd.jupyter.widget-view+json">{"model_id": "abc", "version_major": 2, "version_minor": 0}</script>
</div></div></article></body></html>"""


def test_checker_reports_every_kind_of_fault(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_text(BROKEN_PAGE)
    (site / "ok.png").write_bytes(ONE_PIXEL_PNG)
    [report] = check_site.check_site(site, tmp_path / "shots", CHROMIUM, pages=["page.html"], settle_s=2)
    failures = "\n".join(report["failures"])
    assert "request to another origin: https://cdn.example.com/lib.js" in failures
    assert "failed load: net::ERR_NAME_NOT_RESOLVED (https://cdn.example.com/lib.js)" in failures  # the network is off
    assert "server answered 404 for /missing.png" in failures
    assert "images not loaded: ['missing.png']" in failures
    assert report["figures_loaded"] == 1  # ok.png loaded (naturalWidth 1)
    assert "raw TeX in the text" in failures
    assert "1 of 1 widgets not rendered" in failures
    assert "console error: boom" in failures
    assert "no page of the site shows rendered maths" in failures
    assert "no page of the site shows a rendered, visible widget" in failures
    assert (tmp_path / "shots" / "page.png").stat().st_size > 0


def test_built_site_renders_offline():
    if not (SITE / "index.html").exists():
        pytest.skip(f"site not built ({SITE}/index.html missing): run bash scripts/build_site.sh first")
    reports = check_site.check_site(SITE, SCREENSHOTS, CHROMIUM)
    check_site.print_reports(reports)
    failed = {r["page"]: r["failures"] for r in reports if r["failures"]}
    assert not failed, f"pages with faults (screenshots in {SCREENSHOTS}): {failed}"
    assert all(path.stat().st_size > 0 for r in reports for path in r["screenshots"])
