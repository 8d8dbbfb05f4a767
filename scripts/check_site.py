"""Open the built site in headless Chromium, with the network off, and check what a reader sees.

    python scripts/check_site.py                       # book/_build/html, screenshots in book/_build/screenshots
    python scripts/check_site.py --site DIR --screenshots DIR --chromium /usr/bin/chromium

The site is served by Python's http.server on 127.0.0.1 (a free port); Chromium resolves every
other host to nothing (--host-resolver-rules), so a page that needs a CDN fails here as it would
for an offline reader. Every page built from _toc.yml (every .html except index/search/genindex)
is loaded and checked:

  - maths: every Sphinx math element holds a rendered MathJax <mjx-container>, no MathJax error
    node, and no raw TeX ($$, \\(, \\[, $x$) left in the page's text outside code;
  - figures: every image loaded (naturalWidth > 0); a page built from a notebook shows at least one;
  - widgets: every saved widget view (<script type="application/vnd.jupyter.widget-view+json">)
    was rendered by the ipywidgets embedder into an element with a size, no "Loading widget" text,
    and some page shows a visible one (tqdm hides its bars once done when leave=False);
  - assets: no request left the site's origin, no request failed, no response >= 400 (from the
    browser and from the server's own log), no console error or uncaught exception.

Screenshots: the top of each page, its first figure and its first widget, as PNG files. Their paths
are printed. Exit status 1 if any check fails. The browser is driven through Chromium's DevTools
protocol over a pipe (--remote-debugging-pipe: JSON messages ending in a NUL byte, commands on the
browser's fd 3, replies and events on its fd 4), so nothing beyond the Debian package `chromium`
is needed: no chromedriver, no Python package.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_PAGES = {"index.html", "search.html", "genindex.html"}  # redirect, search box, empty index
# Known upstream faults, each ignored by its exact text, so that anything else still fails:
KNOWN = [
    # Jupyter Book 1 puts sphinx-thebe's inline config <script> (`const THEBE_JS_URL = ...`) twice
    # in every page's head (togglebutton's too, harmless with `var`); the second `const` throws. The
    # first one defines the constants; thebe is off (launch_buttons.thebe: false), nothing uses them.
    "Identifier 'THEBE_JS_URL' has already been declared",
    # The site names no icon, so Chromium asks for /favicon.ico by itself (once per browser):
    # a request of the browser, not an asset any page loads.
    "/favicon.ico",
]


class DevTools:
    """A headless Chromium and its DevTools protocol, over a pair of pipes."""

    def __init__(self, chromium: str, profile_dir: str, log_path: str, width=1280, height=900):
        args = [
            chromium, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
            "--no-sandbox",  # Chromium refuses to run as root with its sandbox (CI containers run as root)
            "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # the network is off
            f"--window-size={width},{height}", "about:blank",
        ]
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # copies numbered >= 10, so that placing them at 3 and 4 in the child never aliases an fd
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        actions = [(os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                   (os.POSIX_SPAWN_DUP2, 1, 2), (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)]
        self.pid = os.posix_spawn(chromium, args, os.environ, file_actions=actions)
        for fd in (to_browser_r, from_browser_w, *high):
            os.close(fd)
        self.log_path, self.size = log_path, (width, height)
        self._buffer, self._next_id, self.events = bytearray(), 0, []

    # -- protocol -----------------------------------------------------------------------------
    def _read(self, deadline: float) -> dict:
        while (end := self._buffer.find(b"\0")) < 0:
            ready, _, _ = select.select([self._from_browser], [], [], max(deadline - time.time(), 0))
            if not ready:
                raise TimeoutError("no message from Chromium in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its DevTools pipe; its log: {self.log_path}")
            self._buffer += chunk
        message = json.loads(self._buffer[:end])
        del self._buffer[: end + 1]
        return message

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        """Send one command and wait for its reply; events that arrive meanwhile go to .events."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, since: int, timeout: float = 60) -> dict:
        """The first event `method` at or after index `since` of .events, reading more as needed."""
        deadline = time.time() + timeout
        while True:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            since = len(self.events)
            self.events.append(self._read(deadline))

    def wait_network_idle(self, since: int, quiet: float = 0.5, timeout: float = 20) -> None:
        """Read events until no request started after `since` has been in flight for `quiet` s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            pending = set()
            for event in self.events[since:]:
                params = event.get("params", {})
                if event.get("method") == "Network.requestWillBeSent":
                    pending.add(params["requestId"])
                elif event.get("method") in ("Network.loadingFinished", "Network.loadingFailed"):
                    pending.discard(params["requestId"])
            try:
                self.events.append(self._read(time.time() + quiet))
            except TimeoutError:
                if not pending:
                    return

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        for _ in range(50):
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._to_browser)
        os.close(self._from_browser)

    # -- one page -----------------------------------------------------------------------------
    def open_tab(self) -> str:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        width, height = self.size
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        return session

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        result = self.send("Runtime.evaluate", session, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


# Run in the page once it has loaded: wait for MathJax's first typesetting and for the widget
# views to render (both asynchronous), then for every image.
SETTLE_JS = """
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const deadline = Date.now() + SETTLE_MS;
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const views = () => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const rendered = s => s.previousElementSibling && s.previousElementSibling.matches('.widget-subarea')
                        && s.previousElementSibling.querySelector('.jupyter-widgets');
  while (Date.now() < deadline && !views().every(rendered)) await sleep(100);
  while (Date.now() < deadline && ![...document.images].every(i => i.complete)) await sleep(100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  return true;
})()
"""

# What the reader sees, as numbers the checks compare.
INSPECT_JS = r"""
(() => {
  const article = document.querySelector('article') || document.body;
  const maths = [...article.querySelectorAll('span.math, div.math')];
  const rawTex = [];
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, {acceptNode: n =>
    n.parentElement.closest('pre, code, script, style, mjx-container, .highlight, textarea, .cell_output')
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  while (walker.nextNode()) {
    const m = walker.currentNode.textContent.match(/\$\$|\\\(|\\\[|\$[^$\s][^$\n]*\$/);
    if (m) rawTex.push(walker.currentNode.textContent.trim().slice(0, 80));
  }
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const widgetBox = s => {
    const area = s.previousElementSibling;
    const w = area && area.matches('.widget-subarea') && area.querySelector('.jupyter-widgets');
    return w ? w.getBoundingClientRect() : null;
  };
  const images = [...article.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth}));
  return {
    from_notebook: article.querySelectorAll('.cell').length > 0,
    math_elements: maths.length,
    math_unrendered: maths.filter(e => !e.querySelector('mjx-container')).length,
    mjx_containers: document.querySelectorAll('mjx-container').length,
    mjx_errors: document.querySelectorAll('mjx-merror').length,
    raw_tex: rawTex.slice(0, 5),
    images: images,
    figures_loaded: article.querySelectorAll('.cell_output img').length
      ? [...article.querySelectorAll('.cell_output img')].filter(i => i.naturalWidth > 0).length : 0,
    widget_views: views.length,
    widgets_rendered: views.filter(s => { const b = widgetBox(s); return b && b.width > 0 && b.height > 0; }).length,
    widgets_visible: [...document.querySelectorAll('.widget-subarea > .jupyter-widgets')]
      .filter(e => getComputedStyle(e).visibility !== 'hidden').length,
    loading_widget_text: document.body.innerText.includes('Loading widget'),
  };
})()
"""


def scroll_to(find_element_js: str) -> str:
    """JS: scroll the element that the expression finds to the middle of the view (false if none)."""
    return f"""(async () => {{
      const e = {find_element_js};
      if (!e) return false;
      e.scrollIntoView({{block: 'center'}});
      await new Promise(r => setTimeout(r, 300));
      return true;
    }})()"""


FIRST_FIGURE = "document.querySelector('.cell_output img')"
# tqdm's progress bars with leave=False are hidden on purpose once done (visibility: hidden)
FIRST_VISIBLE_WIDGET = ("[...document.querySelectorAll('.widget-subarea > .jupyter-widgets')]"
                        ".find(e => getComputedStyle(e).visibility !== 'hidden')")


def start_server(site: Path):
    """http.server on 127.0.0.1 at a free port, in a thread; returns (server, log of (status, path))."""
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            log.append((int(getattr(code, "value", code)), self.path))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, log


def check_page(browser: DevTools, session: str, base: str, page: str, server_log: list, shots: Path,
               settle_s: float = 20) -> dict:
    """Load one page, run every check; returns a report with its failures and screenshots."""
    since, logged = len(browser.events), len(server_log)
    browser.send("Page.navigate", session, url=base + page)
    browser.wait_event("Page.loadEventFired", since)
    browser.evaluate(session, SETTLE_JS.replace("SETTLE_MS", str(int(settle_s * 1000))))
    browser.wait_network_idle(since)
    seen = browser.evaluate(session, INSPECT_JS)
    failures = []

    # maths
    if seen["math_unrendered"]:
        failures.append(f"{seen['math_unrendered']} of {seen['math_elements']} math elements not rendered by MathJax")
    if seen["mjx_errors"]:
        failures.append(f"{seen['mjx_errors']} MathJax error nodes")
    if seen["raw_tex"]:
        failures.append(f"raw TeX in the text: {seen['raw_tex']}")
    # figures
    broken = [i["src"] for i in seen["images"] if not i["width"]]
    if broken:
        failures.append(f"images not loaded: {broken}")
    if seen["from_notebook"] and not seen["figures_loaded"]:
        failures.append("a notebook page with no figure displayed")
    # widgets
    if seen["widgets_rendered"] < seen["widget_views"]:
        failures.append(f"{seen['widget_views'] - seen['widgets_rendered']} of {seen['widget_views']} widgets not rendered")
    if seen["loading_widget_text"]:
        failures.append("'Loading widget' text left on the page")
    # assets and console
    origin, urls = base.rstrip("/"), {}
    for event in browser.events[since:]:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = urls[params["requestId"]] = params["request"]["url"]
            if not url.startswith((origin + "/", "data:", "blob:", "about:")):
                failures.append(f"request to another origin: {url}")
        elif method == "Network.loadingFailed":
            failures.append(f"failed load: {params.get('errorText')} ({urls.get(params['requestId'], '?')})")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            failures.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            failures.append(f"console error: {text[:300]}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            failures.append(f"uncaught exception: {details.get('exception', {}).get('description', details.get('text'))[:300]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            failures.append(f"browser error: {params['entry'].get('text', '')[:300]} {params['entry'].get('url', '')}")
    failures += [f"server answered {status} for {path}" for status, path in server_log[logged:] if status >= 400]
    failures = [f for f in failures if not any(known in f for known in KNOWN)]

    # screenshots: top of the page, first figure, first widget
    stem = page.removesuffix(".html").replace("/", "__")
    saved = [browser.screenshot(session, shots / f"{stem}.png")]
    for label, find in (("figure", FIRST_FIGURE), ("widget", FIRST_VISIBLE_WIDGET)):
        if browser.evaluate(session, scroll_to(find)):
            saved.append(browser.screenshot(session, shots / f"{stem}--{label}.png"))
    return {"page": page, "failures": failures, "screenshots": saved, **{k: seen[k] for k in (
        "mjx_containers", "math_elements", "figures_loaded", "widget_views", "widgets_rendered", "widgets_visible")}}


def site_pages(site: Path) -> list:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html")
                  if not p.relative_to(site).parts[0].startswith("_") and p.name not in SKIP_PAGES)


def check_site(site: Path, screenshots: Path, chromium: str | None = None, pages: list | None = None,
               require_math_and_widgets: bool = True, settle_s: float = 20) -> list:
    """Check every page of the built site (or `pages`); returns one report per page.

    With require_math_and_widgets, the whole site must also show some maths and some widget,
    so that the checks above cannot pass by finding nothing to check. settle_s: how long a page
    may take to typeset its maths and render its widgets after loading.
    """
    site = Path(site)
    if not (site / "index.html").exists() and not pages:
        raise FileNotFoundError(f"{site}/index.html not found: build the site first (bash scripts/build_site.sh)")
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium (Debian package)")
    screenshots = Path(screenshots)
    screenshots.mkdir(parents=True, exist_ok=True)
    pages = pages or site_pages(site)
    if not pages:
        raise FileNotFoundError(f"no pages found under {site}")
    server, server_log = start_server(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tempfile.mkdtemp(prefix="check-site-chromium-")
    browser = DevTools(chromium, profile, str(screenshots / "chromium.log"))
    try:
        session = browser.open_tab()
        reports = [check_page(browser, session, base, page, server_log, screenshots, settle_s) for page in pages]
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    if require_math_and_widgets and reports:
        if not any(r["mjx_containers"] for r in reports):
            reports[0]["failures"].append("no page of the site shows rendered maths")
        if not any(r["widgets_visible"] for r in reports):
            reports[0]["failures"].append("no page of the site shows a rendered, visible widget")
    return reports


def print_reports(reports: list) -> None:
    for r in reports:
        mark = "ok  " if not r["failures"] else "FAIL"
        print(f"{mark} {r['page']}: maths {r['mjx_containers']}, figures {r['figures_loaded']}, "
              f"widgets {r['widgets_rendered']}/{r['widget_views']} rendered ({r['widgets_visible']} visible)")
        for failure in r["failures"]:
            print(f"       - {failure}")
        for path in r["screenshots"]:
            print(f"       screenshot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "book" / "_build" / "screenshots")
    parser.add_argument("--chromium", default=None, help="path of the Chromium binary (default: chromium on PATH)")
    args = parser.parse_args()
    start = time.time()
    reports = check_site(args.site, args.screenshots, args.chromium)
    print_reports(reports)
    failed = [r["page"] for r in reports if r["failures"]]
    print(f"check_site: {len(reports)} pages in {time.time() - start:.0f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
