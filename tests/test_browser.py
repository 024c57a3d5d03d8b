"""Real-browser checks: headless Chromium (Debian's, driven by Playwright).

1. The self-contained HTML report: moving its step slider redraws the density.
2. JupyterLab on loopback with a token: run the quickstart notebook (it opens the shipped
   run files in one explorer, then a freshly tracked run in a second), move the second
   explorer's step slider, check that the rendered chart changes.

Screenshots are saved under pytest's ``tmp_path`` (and copied to ``$HESSNB_SCREENSHOTS``
when set). Under ``CI=true`` a missing browser is a failure, never a skip.
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
from pathlib import Path

import pytest
from viz_data import run_dataset

from hessnb.viz import write_report

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
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


def _label(page, prefix: str) -> str | None:
    return page.evaluate(LABEL_JS, prefix)


def test_report_slider_works_without_kernel(browser, tmp_path: Path) -> None:
    html = write_report(run_dataset(steps=(0, 10, 20, 40)), tmp_path / "report.html", points=120)
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
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
    assert after["lines"] != before["lines"]  # the density (and markers) were redrawn
    assert heading == "hessnb report"


def _label_of(snapshot: dict) -> str:
    return next(t for t in snapshot["texts"] if t.startswith("step "))


# ---------------------------------------------------------------------- JupyterLab
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


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab on 127.0.0.1 with a random token and private config, data and workspaces."""
    _require_browser()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(QUICKSTART, root / QUICKSTART.name)
    shutil.copytree(QUICKSTART.parent / "data", root / "data")  # the shipped run files
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
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
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI runs as root
        cmd.append("--ServerApp.allow_root=True")
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, timeout=60)
        yield f"{base}/lab/tree/{QUICKSTART.name}?token={token}", tmp_path
    finally:
        try:  # a clean shutdown also stops the notebook's kernel
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
        log.close()


KERNEL_IDLE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = w && w.sessionContext && w.sessionContext.session
                 && w.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""
OUTPUTS_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
  .map(o => o.innerText.slice(0, 400)).join('\\n---\\n')"""


def test_quickstart_explorer_in_jupyterlab(browser, lab) -> None:
    url, tmp_path = lab
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        page.goto(url, timeout=60_000)
        page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        try:  # the tracked run's explorer (the last one) draws its last step, 60, first
            page.wait_for_function(LABEL_JS, arg="step 60", timeout=150_000, polling=1000)
        except Exception:
            _shot(page, tmp_path / "lab-failed.png")
            raise AssertionError(
                "the explorer never rendered; outputs:\n" + page.evaluate(OUTPUTS_JS)
            ) from None
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
        _shot(page, tmp_path / "lab.png")
    finally:
        page.close()
    # the shipped runs' explorer keeps its own label; the tracked run's moved from 60 to 20
    assert _labels(before, "step 60") and not _labels(before, "step 20 ")
    assert _labels(after, "step 20 ") and not _labels(after, "step 60")
    assert after["lines"] != before["lines"]
    assert json.dumps(after) != json.dumps(before)


def _labels(snapshot: dict, prefix: str) -> list[str]:
    return [t for t in snapshot["texts"] if t.startswith(prefix)]
