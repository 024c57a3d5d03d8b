"""The notebooks: committed without outputs, each runs top to bottom with its default
(quick) settings, and the run files shipped for the quickstart are what their documented
command makes.

Notebooks execute through ``notebook_runner`` (nbclient with every wait bounded) in a
temporary copy of ``notebooks/`` (so run files, checkpoints and reports land in
``tmp_path``, never in the repository), with ``HESSNB_QUICK=1`` and
``HESSNB_NB_DATA=digits`` (CI has no network: no CIFAR-10 download is attempted). A cell
that raises, runs too long or stalls fails the test, naming the notebook and the cell.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import Session
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from notebook_runner import Limits, NotebookRunError, RearmedChannel, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_batchnorm_outliers.ipynb",
    "03_slq_accuracy.ipynb",
    "04_teaching_outliers.ipynb",
    "05_imagenet_scale.ipynb",
    "06_curvature_and_layers.ipynb",
]
SHIPPED = NOTEBOOK_DIR / "data"
#: The command documented in notebooks/data/README.md (and the quickstart) that makes
#: the shipped run files; the test below runs it (into tmp_path) and compares.
DOCUMENTED = "hessnb demo --quick --no-report --out notebooks/data"
SHIPPED_RUNS = ("no-bn.nc", "bn.nc")
#: The command that makes the precomputed runs of notebook 02 (under an hour on 2 cores).
PAPER_COMMAND = "hessnb reproduce --scale shipped --out notebooks/data/paper"
#: Attributes that define how a run was made (values compared exactly, as text).
SETTINGS = (
    "lanczos_steps",
    "probes",
    "top_k",
    "seed",
    "bn_mode",
    "n_params",
    "schedule",
    "n_examples",
    "model",
    "has_batchnorm",
    "dtype",
    "run",
)
#: The slowest cell (02's training) takes about a minute; a stalled cell fails after
#: ``LIMITS.stall`` seconds without output or kernel CPU use.
LIMITS = Limits()


def _ids(path: Path) -> str:
    return path.name


# ---------------------------------------------------------------------- committed state
def test_the_six_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        "a kernelspec in the metadata keeps JupyterLab from asking for a kernel"
    )
    assert "widgets" not in nb.metadata, "saved widget state: clear outputs before committing"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.outputs or cell.execution_count is not None or "execution" in cell.metadata)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; strip them "
        "(e.g. jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
    )


def test_shipped_run_files_are_small_and_documented() -> None:
    names = sorted(p.name for p in SHIPPED.iterdir())
    assert names == sorted(["README.md", "paper", *SHIPPED_RUNS])
    shipped = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) < 3 * 2**20  # all shipped data
    assert DOCUMENTED in (SHIPPED / "README.md").read_text()
    assert PAPER_COMMAND in (SHIPPED / "README.md").read_text()
    assert PAPER_COMMAND in (NOTEBOOK_DIR / "02_batchnorm_outliers.ipynb").read_text()
    quickstart = (NOTEBOOK_DIR / "01_quickstart.ipynb").read_text()
    assert DOCUMENTED in quickstart and "data/no-bn.nc" in quickstart


# ---------------------------------------------------------------------- execution
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "notebooks"
    shutil.copytree(
        NOTEBOOK_DIR, work, ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints", "*.nc.tmp")
    )
    before = sorted(p.relative_to(NOTEBOOK_DIR) for p in NOTEBOOK_DIR.rglob("*"))
    # the kernel inherits this environment
    monkeypatch.setenv("HESSNB_QUICK", "1")
    monkeypatch.setenv("HESSNB_NB_DATA", "digits")
    monkeypatch.setenv("HESSNB_CIFAR_ROOT", str(tmp_path / "cifar10"))
    monkeypatch.delenv("HESSNB_IMAGENET", raising=False)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    nb = nbformat.read(work / path.name, as_version=4)
    started = time.perf_counter()
    try:
        run_notebook(nb, path.name, work, LIMITS)
    except NotebookRunError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        print(
            f"{path.name}: {time.perf_counter() - started:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f}"
        )
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    after = sorted(p.relative_to(NOTEBOOK_DIR) for p in NOTEBOOK_DIR.rglob("*"))
    assert after == before, "the notebook wrote into the repository's notebooks/ folder"


# ---------------------------------------------------------------------- the runner's guards
async def _reply_delay(poll_slice: float, send_through_channel: bool) -> float:
    """Seconds a channel's pending ``get_msg`` takes to return a reply that arrived just
    before a synchronous send on the same socket (what nbclient's Output-widget mimic does
    while it waits for a cell's reply).

    The reply arrives while the event loop is blocked, so its wakeup is still pending when
    the send makes libzmq consume it; a plain ``AsyncZMQSocketChannel`` then waits out the
    whole 3 s timeout.
    """
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    session = Session(key=b"")
    channel = RearmedChannel(dealer, session)
    channel.poll_slice = poll_slice
    try:
        channel.send(session.msg("kernel_info_request"))
        identity = (await router.recv_multipart())[0]
        waiting = asyncio.ensure_future(channel.get_msg(timeout=3.0))
        await asyncio.sleep(0.05)  # the poll is registered and finds nothing
        session.send(router, "execute_reply", {}, ident=[identity])
        time.sleep(0.05)  # the reply arrives; the blocked loop cannot see it yet
        echo = session.msg("comm_msg")
        if send_through_channel:
            channel.send(echo)
        else:  # a send the channel does not see: only the poll slices bound the wait
            session.send(dealer, echo)
        started = time.perf_counter()
        await waiting
        return time.perf_counter() - started
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()


@pytest.mark.parametrize(
    ("poll_slice", "send_through_channel"),
    [(10.0, True), (0.25, False)],
    ids=["send re-checks the socket", "poll slices bound a lost wakeup"],
)
def test_a_send_does_not_hide_a_queued_reply(poll_slice: float, send_through_channel: bool) -> None:
    assert asyncio.run(_reply_delay(poll_slice, send_through_channel)) < 0.5


GUARDED = {
    "idle cell stalls": (
        "import time\ntime.sleep(600)",
        Limits(stall=3, check=0.5),
        "stalled: no new output for ",
    ),
    "busy cell times out": (
        "while True:\n    pass",
        Limits(stall=2, cell=6, check=0.5),
        "timed out: A cell timed out while it was being executed, after 6 seconds",
    ),
    "notebook limit": (
        "while True:\n    pass",
        Limits(cell=600, notebook=10, check=0.5),
        "did not finish within 10 s",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", GUARDED)
def test_a_stalled_or_runaway_notebook_fails_fast(case: str, tmp_path: Path) -> None:
    """The failure names the notebook, the cell and what happened, comes within seconds
    of the limit (not after the cell's 600 s), and leaves no kernel behind."""
    body, limits, reason = GUARDED[case]
    nb = new_notebook(
        cells=[new_markdown_cell("# guard"), new_code_cell("print('ok')"), new_code_cell(body)]
    )
    started = time.perf_counter()
    with pytest.raises(NotebookRunError) as raised:
        run_notebook(nb, "guard.ipynb", tmp_path, limits)
    assert time.perf_counter() - started < 60
    message = str(raised.value)
    assert message.startswith(f"guard.ipynb: {reason}"), message
    assert message.endswith("in cell 2, which starts:\n" + textwrap.indent(body, "    ")), message
    assert raised.value.cell_index == 2
    assert nb.cells[1].outputs[0]["text"] == "ok\n"  # the cells before ran
    with pytest.raises(ProcessLookupError):
        os.kill(raised.value.kernel_pid, 0)  # the kernel is gone


@pytest.mark.slow
def test_a_cell_that_raises_fails_with_its_traceback(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("print('ok')"), new_code_cell("1 / 0")])
    with pytest.raises(NotebookRunError) as raised:
        run_notebook(nb, "raises.ipynb", tmp_path)
    message = str(raised.value)
    assert message.startswith("raises.ipynb: cell 1 raised:\n"), message
    assert "1 / 0" in message and "ZeroDivisionError" in message
    with pytest.raises(ProcessLookupError):
        os.kill(raised.value.kernel_pid, 0)


# ---------------------------------------------------------------------- shipped runs
def _schema(ds) -> dict[str, tuple[tuple[str, ...], str]]:
    return {name: (tuple(var.dims), str(var.dtype)) for name, var in ds.variables.items()}


@pytest.mark.slow
def test_shipped_runs_are_reproduced_by_their_command(tmp_path: Path) -> None:
    """Same schema (variables, dims, dtypes), settings and steps; values may differ."""
    from hessnb import cli, open_run

    words = DOCUMENTED.split()[1:]  # the documented command, run into tmp_path
    words[words.index("--out") + 1] = str(tmp_path)
    assert cli.main([*words, "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SHIPPED_RUNS)
    for name in SHIPPED_RUNS:
        shipped, fresh = open_run(SHIPPED / name), open_run(tmp_path / name)
        assert _schema(fresh) == _schema(shipped), (
            f"{name}: the schema changed; regenerate with `{DOCUMENTED}` "
            "(see notebooks/data/README.md)"
        )
        assert fresh["step"].values.tolist() == shipped["step"].values.tolist(), name
        assert dict(fresh.sizes) == dict(shipped.sizes), name
        for key in SETTINGS:
            assert str(fresh.attrs.get(key)) == str(shipped.attrs.get(key)), (
                f"{name}: attribute {key} differs ({fresh.attrs.get(key)!r} now, "
                f"{shipped.attrs.get(key)!r} shipped); regenerate with `{DOCUMENTED}`"
            )


def test_shipped_paper_runs_match_their_scale_and_give_every_verdict() -> None:
    from hessnb import open_run
    from hessnb.reference.experiments import RUNS, SCALES
    from hessnb.reference.verdicts import evaluate

    scale = SCALES["shipped"]
    runs = {name: open_run(SHIPPED / "paper" / f"{name}.nc") for name in RUNS}
    for name, run in runs.items():
        assert run.attrs["scale"] == "shipped" and run.attrs["run"] == name
        assert run.step.values.tolist() == list(scale.record)
        assert run.attrs["lanczos_steps"] == scale.slq.lanczos_steps
        assert run.attrs["bn_mode"] == ("eval" if name == "bn-eval" else "train")
    assert [v.experiment[:2] for v in evaluate(runs)] == ["E1", "E1", "E2", "E3", "E4", "E5"]
