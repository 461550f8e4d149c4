"""The results site (``make site``): built from the committed executed pages and results, every
page loads in headless Chromium, every figure is an image that decodes, no cell shows an error,
no link is broken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .test_browser import _chromium

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = sorted((ROOT / "notebooks" / "executed").glob("*/*.ipynb"))

pytestmark = pytest.mark.slow


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_site.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _images_in(nb: Path) -> int:
    cells = json.loads(nb.read_text())["cells"]
    return sum(any(k.startswith("image/") for k in o.get("data", {}))
               for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_the_front_page_links_every_page_and_no_link_is_broken(site):
    parser = _Links()
    parser.feed((site / "index.html").read_text())
    local = [h for h in parser.hrefs if not re.match(r"^[a-z]+:", h)]
    assert sorted(local) == sorted(f"{nb.parent.name}/{nb.stem}.html" for nb in EXECUTED)
    for page in [site / "index.html", *site.glob("*/*.html")]:
        links = _Links()
        links.feed(page.read_text())
        for href in links.hrefs:
            if re.match(r"^(https?:|mailto:|#)", href):
                continue
            assert (page.parent / href.split("#")[0]).exists(), f"{page.name}: broken link {href}"
    assert "Findings" in (site / "index.html").read_text()


def test_every_page_loads_shows_its_figures_and_no_error(site):
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found ($DEMHEC_CHROMIUM, chromium, chromium-browser, google-chrome): "
                    "install Debian's chromium (apt-get install chromium; .ci/run does so as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            for nb in [None, *EXECUTED]:
                page_path = site / "index.html" if nb is None else site / nb.parent.name / f"{nb.stem}.html"
                page = browser.new_page()
                try:
                    page.goto(page_path.as_uri(), wait_until="load")
                    shown = page.evaluate("""() => [...document.images].map(
                        i => ({ok: i.complete && i.naturalWidth > 0}))""")
                    errors = page.evaluate("""() => [...document.querySelectorAll(
                        '[data-mime-type="application/vnd.jupyter.error"], .jp-OutputArea-output.jp-mod-error')].length""")
                    text = page.inner_text("body")
                finally:
                    page.close()
                name = page_path.relative_to(site).as_posix()
                assert all(i["ok"] for i in shown), f"{name}: a figure does not decode"
                if nb is not None:
                    assert len(shown) >= _images_in(nb), f"{name}: {len(shown)} images for {_images_in(nb)} figures"
                assert errors == 0 and not re.search(r"^Traceback", text, re.MULTILINE), f"{name} shows an error"
        finally:
            browser.close()
