"""Real-browser checks: headless Chromium (Debian's, driven by Playwright), no network.

1. The self-contained HTML report: moving its step slider redraws the density.
2. JupyterLab on loopback with a token, serving a temporary copy of ``notebooks/`` with
   the notebook tests' quick settings (``HESSNB_QUICK=1``, ``HESSNB_NB_DATA=digits``;
   notebook 02 with ``HESSNB_SCALE=shipped``, drawing its precomputed runs):
   every notebook runs top to bottom; no output says "Error loading script" (or shows
   another front-end error), and every chart output holds a drawn Vega view (an
   ``svg.marks`` or ``canvas.marks``). In the quickstart, moving the tracked run's
   explorer slider redraws its chart.

Every wait is bounded: the test fails, naming the notebook and cell, when the kernel sits
idle for :data:`STALL_S` seconds while a cell waits to finish, when one cell computes for
more than :data:`CELL_LIMIT_S` seconds, or a notebook for more than
:data:`NOTEBOOK_LIMIT_S`. Screenshots are saved under pytest's
``tmp_path`` (and copied to ``$HESSNB_SCREENSHOTS`` when set). Under ``CI=true`` a missing
browser is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from viz_data import run_dataset

from hessnb.viz import write_report

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
QUICKSTART = "01_quickstart.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The kernel idle this long while a cell waits to finish: stalled, the test fails.
STALL_S = 60
#: One cell computing longer than this fails the test, as does a whole notebook longer than
#: NOTEBOOK_LIMIT_S (the same bounds as tests/notebook_runner.py; the slowest cell, 02's
#: quick experiments, takes about 2.5 minutes on 2 busy cores).
CELL_LIMIT_S = 600
NOTEBOOK_LIMIT_S = 1200
#: Charts must be drawn this long after the last cell finished.
DRAW_S = 60
#: Front-end failures a person would see in an output area.
FRONT_END_ERRORS = (
    "Error loading script",
    "JavaScript Error",
    "Error displaying widget",
    "Failed to load model class",
)
#: Texts of every SVG <text> and the path data of every line mark: what a person sees.
SNAPSHOT_JS = """() => ({
  texts: [...document.querySelectorAll('svg text')].map(t => t.textContent),
  lines: [...document.querySelectorAll('svg .mark-line path')].map(p => p.getAttribute('d')),
})"""
LABEL_JS = """(prefix) => [...document.querySelectorAll('svg text')]
  .map(t => t.textContent).find(t => t.startsWith(prefix)) || null"""


def _require_browser() -> str:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if not CHROMIUM.exists():
        if ci:
            pytest.fail(
                f"CI is set but {CHROMIUM} is missing: .ci/run must apt-get install chromium"
            )
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if ci:
            pytest.fail("CI is set but playwright is not installed (pip install -e .[dev])")
        pytest.skip("playwright is not installed")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HESSNB_SCREENSHOTS"):
        out = Path(os.environ["HESSNB_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


def _label_of(snapshot: dict) -> str:
    return next(t for t in snapshot["texts"] if t.startswith("step "))


def _labels(snapshot: dict, prefix: str) -> list[str]:
    return [t for t in snapshot["texts"] if t.startswith(prefix)]


# ---------------------------------------------------------------------- the report
def test_report_slider_works_without_kernel(browser, tmp_path: Path) -> None:
    html = write_report(run_dataset(steps=(0, 10, 20, 40)), tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    page.route(lambda url: not url.startswith("file:"), lambda route: route.abort())
    try:
        page.goto(html.as_uri(), timeout=30_000)
        page.wait_for_function(LABEL_JS, arg="step 40", timeout=30_000)
        before = page.evaluate(SNAPSHOT_JS)
        slider = page.locator("input[type=range]").first
        slider.evaluate(
            "el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true})); }"
        )
        page.wait_for_function(LABEL_JS, arg="step 0 ", timeout=15_000)
        after = page.evaluate(SNAPSHOT_JS)
        heading = page.locator("h1").inner_text(timeout=5_000)
        _shot(page, tmp_path / "report.png")
    finally:
        page.close()
    assert _label_of(before).startswith("step 40") and _label_of(after).startswith("step 0 ")
    assert "σ " in _label_of(after)  # each step names its own kernel width
    assert after["lines"] != before["lines"]  # the density (and markers) were redrawn
    assert heading == "hessnb report"
    assert "spectrum statistics over training" in before["texts"]


# ---------------------------------------------------------------------- JupyterLab
@dataclass
class Lab:
    """A running JupyterLab: its address, token and where files go."""

    base: str
    token: str
    tmp: Path
    root: Path

    def url(self, notebook: str) -> str:
        """The notebook in a workspace of its own, reset (no tabs restored)."""
        workspace = Path(notebook).stem.replace("_", "-")
        return f"{self.base}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen, base: str, token: str) -> None:
    try:  # a clean shutdown also stops the notebooks' kernels
        request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(request, timeout=5).close()
        proc.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a random token, private config, data, settings and
    workspaces, serving a copy of ``notebooks/``; kernels get the quick settings."""
    _require_browser()
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    shutil.copytree(
        NOTEBOOK_DIR,
        root,
        ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints", "*.nc.tmp"),
    )
    # every cell in the DOM (no windowing), so that every output can be checked; no news
    for plugin, values in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ):
        settings = tmp / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        # the kernels inherit these: the notebook tests' quick, offline settings
        "HESSNB_QUICK": "1",
        "HESSNB_NB_DATA": "digits",
        "HESSNB_CIFAR_ROOT": str(tmp / "cifar10"),
        # notebook 02 draws the shipped runs: its training path runs in test_notebooks.py
        "HESSNB_SCALE": "shipped",
    }
    env.pop("HESSNB_IMAGENET", None)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        f"--LabApp.user_settings_dir={tmp / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI runs as root
        cmd.append("--ServerApp.allow_root=True")
    log = (tmp / "lab.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, timeout=60)
        yield Lab(base, token, tmp, root)
    finally:
        _stop(proc, base, token)
        log.close()


KERNEL_IDLE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = w && w.sessionContext && w.sessionContext.session
                 && w.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""
#: The open notebook's code cells: prompt ("[*]:" while queued or running), execution
#: count, first source line, errors, and chart outputs expected from the kernel's side.
STATUS_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code').map(c => {
    const outputs = c.model.outputs.toJSON();
    const prompt = c.node.querySelector('.jp-InputPrompt');
    const charts = outputs.filter(o => {
      const data = o.data || {};
      const text = String(data['text/plain'] || '');
      const html = String(data['text/html'] || '');
      return Object.keys(data).some(k => k.startsWith('application/vnd.vegalite'))
        || html.includes('altair-viz')
        || ('application/vnd.jupyter.widget-view+json' in data
            && (text.includes('JupyterChart') || text.startsWith('Explorer(')));
    }).length;
    return {
      source: c.model.sharedModel.getSource().split('\\n')[0],
      count: c.model.executionCount,
      busy: !!prompt && prompt.textContent.includes('*'),
      errors: outputs.filter(o => o.output_type === 'error')
                     .map(o => o.ename + ': ' + o.evalue),
      charts,
    };
  });
  return {kernel: kernel ? kernel.status : 'none', cells};
}"""
#: Every chart container (vega-embed, or altair's HTML output div) and whether Vega drew
#: into it; the text of outputs showing a front-end error.
CHARTS_JS = """(errors) => {
  const found = document.querySelectorAll(
    '.jp-OutputArea-output .vega-embed, .jp-OutputArea-output [id^="altair-viz-"]');
  const charts = [...new Set(found)];
  const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
  return {
    charts: charts.length,
    drawn: charts.filter(c => c.querySelector('svg.marks, canvas.marks')).length,
    undrawn: charts.filter(c => !c.querySelector('svg.marks, canvas.marks'))
                   .map(c => c.innerText.slice(0, 200)),
    errors: outputs.map(o => o.innerText).filter(t => errors.some(e => t.includes(e)))
                   .map(t => t.slice(0, 300)),
  };
}"""


def _run_all(page, name: str, tmp: Path) -> dict:
    """Run every cell of the open notebook; the final status once all have run.

    Fails as soon as a cell raises, the kernel sits idle for STALL_S while a cell waits
    (a stall: the front end waiting on a kernel that has nothing left to do), one cell
    computes for more than CELL_LIMIT_S, or the notebook for more than NOTEBOOK_LIMIT_S.
    """

    def fail(why: str) -> None:
        _shot(page, tmp / f"{Path(name).stem}-failed.png")
        pytest.fail(f"{name}: {why}", pytrace=False)

    # started, not awaited: the command's promise settles only when every cell has run
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    started = time.monotonic()
    current, since, idle_since, took = None, started, None, {}
    while True:
        time.sleep(1.0)
        status = page.evaluate(STATUS_JS)
        cells, now = status["cells"], time.monotonic()
        for i, cell in enumerate(cells):
            if cell["errors"]:
                fail(f"code cell {i} ({cell['source']!r}) raised {cell['errors']}")
        if status["kernel"] in ("dead", "autorestarting", "restarting"):
            fail(f"the kernel died ({status['kernel']}) while running the notebook")
        pending = [i for i, c in enumerate(cells) if c["busy"] or c["count"] is None]
        if not pending and status["kernel"] == "idle":
            slowest = sorted(took.items(), key=lambda item: -item[1])[:3]
            print(f"{name}: {len(cells)} code cells in {now - started:.0f} s; slowest {slowest}")
            return status
        busy = next((i for i, c in enumerate(cells) if c["busy"]), None)
        if busy != current:
            if current is not None:
                took[current] = round(now - since)
            current, since = busy, now
        waiting = pending[0] if pending else None
        if busy is not None and now - since > CELL_LIMIT_S:
            fail(f"code cell {busy} ({cells[busy]['source']!r}) ran for over {CELL_LIMIT_S} s")
        if now - started > NOTEBOOK_LIMIT_S:
            fail(f"still running after {NOTEBOOK_LIMIT_S} s (code cell {busy})")
        idle_since = (idle_since or now) if status["kernel"] == "idle" else None
        if idle_since is not None and now - idle_since > STALL_S:
            fail(
                f"stalled: the kernel has been idle for {STALL_S} s while code cell {waiting} "
                f"({cells[waiting]['source']!r}) waits to finish"
            )


def _charts_drawn(page, name: str, expected: int, tmp: Path) -> dict:
    """Wait until every chart container holds a drawn Vega view (at most DRAW_S)."""
    deadline = time.monotonic() + DRAW_S
    while True:
        seen = page.evaluate(CHARTS_JS, list(FRONT_END_ERRORS))
        complete = seen["charts"] >= expected and seen["drawn"] == seen["charts"]
        if complete or seen["errors"] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    _shot(page, tmp / f"{Path(name).stem}.png")
    assert not seen["errors"], f"{name}: outputs show front-end errors: {seen['errors']}"
    assert seen["charts"] >= max(expected, 1), (
        f"{name}: {seen['charts']} chart containers in the page, {expected} chart outputs"
    )
    assert seen["drawn"] == seen["charts"], (
        f"{name}: {seen['charts'] - seen['drawn']} of {seen['charts']} charts not drawn "
        f"within {DRAW_S} s: {seen['undrawn']}"
    )
    return seen


def _move_tracked_explorer(page, tmp: Path) -> None:
    """In the quickstart, step the tracked run's explorer (the last) from 60 back to 20."""
    page.wait_for_function(LABEL_JS, arg="step 60", timeout=30_000, polling=1000)
    explorer = (
        page.locator(".widget-vbox")
        .filter(has=page.locator(".widget-label", has_text="step"))
        .last  # the first explorer shows the shipped runs
    )
    explorer.scroll_into_view_if_needed(timeout=10_000)
    before = page.evaluate(SNAPSHOT_JS)
    handle = (
        explorer.locator(".widget-hslider")
        .filter(has=page.locator(".widget-label", has_text="step"))
        .locator(".noUi-handle")
        .first
    )
    handle.focus(timeout=10_000)
    for _ in range(2):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function(LABEL_JS, arg="step 20 ", timeout=30_000)
    after = page.evaluate(SNAPSHOT_JS)
    _shot(page, tmp / "quickstart-explorer.png")
    # the shipped runs' explorer keeps its own label; the tracked run's moved from 60 to 20
    assert _labels(before, "step 60") and not _labels(before, "step 20 ")
    assert _labels(after, "step 20 ") and not _labels(after, "step 60")
    assert after["lines"] != before["lines"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_renders_every_chart_offline(browser, lab: Lab, path: Path) -> None:
    name = path.name
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.route(  # nothing from the internet: a chart that needs a CDN must fail here
        lambda url: not url.startswith(lab.base), lambda route: route.abort()
    )
    try:
        started = time.monotonic()
        page.goto(lab.url(name), timeout=60_000)
        page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000, polling=500)
        print(f"{name}: kernel ready after {time.monotonic() - started:.0f} s")
        status = _run_all(page, name, lab.tmp)
        expected = sum(c["charts"] for c in status["cells"])
        started = time.monotonic()
        seen = _charts_drawn(page, name, expected, lab.tmp)
        print(
            f"{name}: {seen['drawn']} charts drawn ({expected} chart outputs) "
            f"{time.monotonic() - started:.0f} s later"
        )
        if name == QUICKSTART:
            _move_tracked_explorer(page, lab.tmp)
    finally:
        try:  # free the CPU for the next notebook
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        except Exception:  # the page may be broken; stopping the server stops the kernel
            pass
        page.close()


def test_the_checks_catch_a_cdn_chart_and_a_long_cell(
    browser, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chart drawn by altair's default (CDN) renderer fails the rendering check, and a
    cell running past the limit fails the run, naming the notebook and the cell."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    name = "zz_checks.ipynb"
    chart = (
        "import altair as alt\n"
        "alt.renderers.enable('default')  # Vega from the CDN, which this page cannot reach\n"
        "alt.Chart(alt.Data(values=[{'x': 1}])).mark_point().encode(x='x:Q')"
    )
    cells = [new_code_cell(chart), new_code_cell("import time\ntime.sleep(120)")]
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = new_notebook(cells=cells, metadata={"kernelspec": spec})
    nbformat.write(notebook, lab.root / name)
    # 30 s: importing altair in cell 0 must fit even on a loaded 2-core machine
    monkeypatch.setattr(sys.modules[__name__], "CELL_LIMIT_S", 30)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.route(lambda url: not url.startswith(lab.base), lambda route: route.abort())
    try:
        page.goto(lab.url(name), timeout=60_000)
        page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000, polling=500)
        with pytest.raises(pytest.fail.Exception, match=r"zz_checks.ipynb: code cell 1 .*30 s"):
            _run_all(page, name, lab.tmp)
        monkeypatch.setattr(sys.modules[__name__], "DRAW_S", 10)
        with pytest.raises(AssertionError, match=r"Error loading script|not drawn"):
            _charts_drawn(page, name, 1, lab.tmp)
    finally:
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        page.close()
