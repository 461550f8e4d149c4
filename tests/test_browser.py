"""The notebooks as a reader meets them: JupyterLab started from the project's
environment, an executed notebook opened in headless Chromium (Debian's ``chromium``, driven by
playwright), its figures rendered as images and no cell showing an error.

The notebooks opened: one executed here (a matplotlib figure, a table, a warning on stderr), a
copy of it damaged on purpose (an undecodable figure, a cell that raised) that the check must
catch, and every committed executed notebook under ``notebooks/executed/``.

Chromium: ``$DEMHEC_CHROMIUM`` or the first of ``chromium``, ``chromium-browser``,
``google-chrome`` on the PATH (``.ci/run`` installs Debian's ``chromium`` when it is missing);
without one the tests skip and say so, and in CI that skip fails the run
(``tests/skips_fail_in_ci.py``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = sorted((ROOT / "notebooks" / "executed").glob("*/*.ipynb"))  # executed/<profile>/
TOKEN = "demhec-browser-test"
# A busy 2-core machine: JupyterLab takes ~10 s to start there, a notebook page ~10 s to render.
START_S, PAGE_S = 120, 90

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    given = os.environ.get("DEMHEC_CHROMIUM")
    if given:
        return shutil.which(given)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET") -> bytes:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def _settings(folder: Path) -> None:
    """Every cell in the page (no windowing, so each output is in the DOM), no news prompt."""
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false",
                                                               "checkForUpdates": False}}.items():
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost over a fresh folder, with its own config and settings;
    yields (base URL, the folder it serves). Its kernels are shut down and it is stopped after."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[notebooks]')")
    home = tmp_path_factory.mktemp("lab")
    served = home / "served"
    served.mkdir()
    _settings(home / "settings")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(home / "lab.log", "w")  # closed below, after the server
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={served}", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                _get(f"{base}/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, served
    finally:
        # Kernels run in sessions of their own: shut them down through the server, then stop it.
        try:
            for kernel in json.loads(_get(f"{base}/api/kernels")):
                _get(f"{base}/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:  # its shutdown can hang for minutes on a busy machine
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found ($DEMHEC_CHROMIUM, chromium, chromium-browser, google-chrome): "
                    "install Debian's chromium (apt-get install chromium; .ci/run does so as root) "
                    "to open the notebooks in JupyterLab")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


# Every output area of the page: its MIME type, its text, and for images whether the browser
# decoded them (a figure a reader sees has a natural size and a place on the page).
_READ_PAGE = """() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')].map(e => {
    const img = e.querySelector('img');
    return {mime: e.getAttribute('data-mime-type'), text: e.innerText.slice(0, 2000),
            image: img ? {loaded: img.complete && img.naturalWidth > 0,
                          width: img.getBoundingClientRect().width} : null};
})"""


# What a raised exception looks like on the page (a warning on stderr is not one).
_RAISED = re.compile(r"^(Traceback|\w+(Error|Exception)\b)", re.MULTILINE)


def _expected(nb: dict) -> tuple[int, int]:
    """(cells, image outputs) of a notebook file."""
    images = sum(any(k.startswith("image/") for k in o.get("data", {}))
                 for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    return len(nb["cells"]), images


def _open(browser, lab, path: Path) -> dict:
    """Open ``path`` (under the served folder) in JupyterLab; what its outputs show: figures
    rendered, figures broken and the errors on the page."""
    base, served = lab
    cells, images = _expected(json.loads(path.read_text()))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{base}/lab/tree/{path.relative_to(served).as_posix()}?token={TOKEN}&reset")
        try:
            page.wait_for_function(
                """([cells, images]) => document.querySelectorAll('.jp-Notebook .jp-Cell').length === cells
                && [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output img')]
                    .filter(i => i.complete).length >= images""",
                arg=[cells, images], timeout=PAGE_S * 1000)
        except Exception as e:  # playwright's TimeoutError: say what the page did show
            pytest.fail(f"{path.name}: {cells} cells and {images} figures not all on the page after "
                        f"{PAGE_S} s ({type(e).__name__}); its outputs: {page.evaluate(_READ_PAGE)}")
        outputs = page.evaluate(_READ_PAGE)
    finally:
        page.close()
    shown = [o["image"] for o in outputs if o["image"] is not None]
    return {
        "figures": sum(i["loaded"] and i["width"] > 0 for i in shown),
        "broken_figures": sum(not (i["loaded"] and i["width"] > 0) for i in shown),
        # JupyterLab shows a raised exception as stderr text holding its traceback.
        "errors": [o["text"] for o in outputs if o["mime"] == "application/vnd.jupyter.stderr"
                   and _RAISED.search(o["text"])],
        "expected_figures": images,
    }


@pytest.fixture(scope="module")
def executed(lab, tmp_path_factory):
    """A small notebook executed by a kernel of the project's environment, and a damaged copy."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _, served = lab
    v4 = nbformat.v4
    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}})
    nb.cells = [
        v4.new_markdown_cell("# Browser check\nA figure, a table and a warning, as a reader sees them."),
        v4.new_code_cell("import matplotlib.pyplot as plt\nimport pandas as pd\n"
                         "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 3, 5], [90, 70, 40], 'o-')\n"
                         "ax.set(xlabel='severity', ylabel='accuracy (%)')\nplt.show()"),
        v4.new_code_cell("pd.DataFrame({'corruption': ['clean', 'pixelate'], 'accuracy': [91.0, 62.5]})"),
        v4.new_code_cell("import warnings\nwarnings.warn('a warning is not an error')"),
    ]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=PAGE_S,
                            resources={"metadata": {"path": str(served)}}).execute()
    good = served / "executed_here.ipynb"
    nbformat.write(nb, good)
    bad = copy.deepcopy(nb)
    bad.cells[1].outputs[0]["data"]["image/png"] = "bm90IGEgcG5n"  # "not a png"
    bad.cells.append(v4.new_code_cell("1 / 0", outputs=[v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero",
        traceback=["Traceback (most recent call last):", "ZeroDivisionError: division by zero"])]))
    damaged = served / "damaged.ipynb"
    nbformat.write(bad, damaged)
    return good, damaged


def test_an_executed_notebook_shows_its_figures_in_jupyterlab(browser, lab, executed):
    good, _ = executed
    seen = _open(browser, lab, good)
    assert seen == {"figures": 1, "broken_figures": 0, "errors": [], "expected_figures": 1}, seen


def test_the_check_sees_a_broken_figure_and_an_error(browser, lab, executed):
    _, damaged = executed
    seen = _open(browser, lab, damaged)
    assert seen["figures"] == 0 and seen["broken_figures"] == 1, seen
    assert len(seen["errors"]) == 1 and "ZeroDivisionError" in seen["errors"][0], seen


@pytest.mark.parametrize("notebook", EXECUTED, ids=[f"{p.parent.name}/{p.name}" for p in EXECUTED])
def test_committed_executed_notebook_in_jupyterlab(browser, lab, notebook):
    """Each committed executed page: every figure it holds is rendered, no cell shows an error."""
    _, served = lab
    copy_ = served / "executed" / notebook.parent.name / notebook.name  # a copy: JupyterLab may save what it opens
    copy_.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook, copy_)
    seen = _open(browser, lab, copy_)
    assert seen["broken_figures"] == 0 and seen["errors"] == [], seen
    assert seen["figures"] == seen["expected_figures"], seen
