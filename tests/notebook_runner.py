"""Execute a notebook in a fresh kernel, every wait bounded: a cell that raises, runs too
long or stalls fails with a message that names the notebook and the cell, and the kernel
(with its process group) is killed on any failure.

Two guards:

- The kernel client's channels re-check their socket after each send and poll in short
  slices. jupyter_client's ``Session.send`` writes through a synchronous shadow of the
  ``zmq.asyncio`` socket. That write makes libzmq process the socket's pending commands,
  which drains the edge-triggered ``ZMQ_FD``, so a reply that arrived just before is
  queued while the event loop is never woken for it: the pending ``poll`` sleeps until its
  timeout. nbclient sends on the shell channel while it waits there for the cell's reply
  whenever a cell displays into an ``ipywidgets.Output`` (its Output-widget mimic echoes
  the outputs back to the kernel), as ``widgets.interact`` does; the cell's reply then
  waited out the whole per-cell timeout.
- A watchdog: a cell stalls when, for ``Limits.stall`` seconds, it produces no new output
  and the kernel's process group uses (almost) no CPU; a busy cell is bounded by
  ``Limits.cell``, the kernel start by ``Limits.startup``, the outputs after a cell's reply
  by ``Limits.iopub``, and the whole notebook by ``Limits.notebook``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from traitlets import Type, default


class RearmedChannel(AsyncZMQSocketChannel):
    """A kernel channel whose sends cannot hide a message that arrived meanwhile."""

    #: Longest single wait on the socket, seconds: a wakeup lost any other way costs at most this.
    poll_slice: float = 0.25

    def send(self, msg: dict[str, Any]) -> None:
        """Send ``msg``, then make pyzmq re-check the socket for a queued message.

        Reading ``EVENTS`` through the ``zmq.asyncio`` socket schedules the wakeup of a
        pending ``poll`` when a message is queued.
        """
        super().send(msg)
        self.socket.get(zmq.EVENTS)

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message, waiting at most ``timeout`` seconds (``None``: no limit).

        Raises
        ------
        queue.Empty
            No message within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.poll_slice
            if deadline is not None:
                left = max(0.0, min(left, deadline - time.monotonic()))
            try:
                return await super().get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class GuardedKernelClient(AsyncKernelClient):
    """An asynchronous kernel client on :class:`RearmedChannel` channels."""

    shell_channel_class = Type(RearmedChannel)
    iopub_channel_class = Type(RearmedChannel)
    stdin_channel_class = Type(RearmedChannel)
    control_channel_class = Type(RearmedChannel)


class GuardedKernelManager(AsyncKernelManager):
    """An asynchronous kernel manager whose clients are :class:`GuardedKernelClient`."""

    @default("client_factory")
    def _guarded_client_factory(self) -> type[GuardedKernelClient]:
        return GuardedKernelClient


@dataclass(frozen=True)
class Limits:
    """Bounds on every wait while a notebook runs, in seconds."""

    startup: int = 60  # the kernel answers kernel_info
    cell: int = 600  # one cell, however busy
    stall: float = 60.0  # no new output and an idle kernel: the cell has stalled
    iopub: int = 30  # a cell's outputs and idle status, after its reply
    notebook: float = 1200.0  # the whole notebook, kernel start and shutdown included
    check: float = 2.0  # how often the watchdog looks
    #: CPU the kernel may use while counted idle, as a fraction of the time.
    idle_cpu: float = 0.02


class NotebookRunError(RuntimeError):
    """A notebook did not run to the end: a cell raised, ran too long or stalled.

    Attributes
    ----------
    cell_index : int or None
        Index (among all cells) of the cell that was running; ``None`` before the first.
    kernel_pid : int or None
        The kernel's process id (killed by the time this is raised).
    """

    def __init__(self, message: str, cell_index: int | None, kernel_pid: int | None) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.kernel_pid = kernel_pid


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds used by the processes of process group ``pgid`` and their reaped children.

    ``None`` where ``/proc`` cannot tell (not Linux) or no process is in the group.
    """
    ticks = 0
    found = False
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:  # the process ended meanwhile
                continue
            # after "pid (comm)": state, ppid, pgrp, ...; utime, stime, cutime, cstime are 11..14
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                found = True
                ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


@dataclass
class _Progress:
    """What the watchdog knows about the running notebook."""

    client: NotebookClient
    cell: NotebookNode | None = None
    index: int | None = None
    process: subprocess.Popen | None = None
    pgid: int | None = None
    marker: tuple[int | None, int] = (None, 0)
    quiet_since: float = field(default_factory=time.monotonic)
    cpu_at_quiet: float = 0.0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def on_cell_execute(self, cell: NotebookNode, cell_index: int, **_: Any) -> None:
        self.cell, self.index = cell, cell_index
        self.note_kernel()

    def note_kernel(self) -> None:
        """Keep hold of the kernel's process once it has one."""
        provisioner = getattr(self.client.km, "provisioner", None)
        if self.process is None and getattr(provisioner, "process", None) is not None:
            self.process, self.pgid = provisioner.process, provisioner.pgid

    def quiet_for(self, now: float, idle_cpu: float) -> tuple[float, float]:
        """Seconds without new output or kernel CPU use, and the CPU used in that time."""
        marker = (self.index, len(self.cell.outputs) if self.cell is not None else 0)
        cpu = group_cpu_seconds(self.pgid) if self.pgid is not None else None
        cpu = 0.0 if cpu is None else cpu
        busy = cpu - self.cpu_at_quiet > idle_cpu * (now - self.quiet_since) + 0.05
        if marker != self.marker or busy:
            self.marker, self.quiet_since, self.cpu_at_quiet = marker, now, cpu
        return now - self.quiet_since, cpu - self.cpu_at_quiet

    def where(self) -> str:
        if self.cell is None:
            return "before the first cell (kernel start)"
        head = "\n".join(self.cell.source.strip().splitlines()[:3])
        return f"in cell {self.index}, which starts:\n" + textwrap.indent(head, "    ")

    def kill(self) -> None:
        """Kill the kernel's process group if the kernel still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pgid or self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def run_notebook(
    nb: NotebookNode, name: str, cwd: Path, limits: Limits | None = None
) -> NotebookNode:
    """Execute ``nb`` in place with a ``python3`` kernel started in ``cwd``.

    Parameters
    ----------
    nb : NotebookNode
        The notebook; its cells receive their outputs.
    name : str
        The notebook's name, for messages.
    cwd : Path
        The kernel's working directory.
    limits : Limits, optional
        Bounds on the waits (default ``Limits()``).

    Returns
    -------
    NotebookNode
        ``nb``, executed.

    Raises
    ------
    NotebookRunError
        A cell raised, ran past ``limits.cell``, stalled for ``limits.stall``, its outputs
        did not come within ``limits.iopub``, the kernel died or did not start, or the
        notebook ran past ``limits.notebook``. The kernel is killed first.
    """
    return asyncio.run(_run(nb, name, cwd, limits or Limits()))


async def _run(nb: NotebookNode, name: str, cwd: Path, limits: Limits) -> NotebookNode:
    client = NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=GuardedKernelManager,
        resources={"metadata": {"path": str(cwd)}},
        timeout=limits.cell,
        startup_timeout=limits.startup,
        iopub_timeout=limits.iopub,
        raise_on_iopub_timeout=True,
        shutdown_kernel="immediate",
    )
    progress = _Progress(client)
    client.on_cell_execute = progress.on_cell_execute
    started = time.monotonic()
    task = asyncio.ensure_future(client.async_execute())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=limits.check)
            progress.note_kernel()
            if done:
                return _result(task, name, progress)
            now = time.monotonic()
            quiet, cpu = progress.quiet_for(now, limits.idle_cpu)
            if now - started > limits.notebook:
                reason = f"did not finish within {limits.notebook:.0f} s"
            elif quiet > limits.stall:
                finished = progress.cell is not None and "iopub.status.idle" in (
                    progress.cell.metadata.get("execution", {})
                )
                reason = (
                    f"stalled: no new output for {quiet:.0f} s while the kernel used "
                    f"{cpu:.2f} s of CPU (the kernel had "
                    f"{'' if finished else 'not '}reported the cell finished)"
                )
            else:
                continue
            task.cancel()
            await asyncio.wait({task}, timeout=30)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the reason above says what happened
            raise NotebookRunError(
                f"{name}: {reason}, {progress.where()}", progress.index, progress.pid
            )
    finally:
        progress.kill()


def _result(task: asyncio.Task, name: str, progress: _Progress) -> NotebookNode:
    """The executed notebook, or the task's failure as a :class:`NotebookRunError`."""
    try:
        return task.result()
    except CellExecutionError as exc:  # its text shows the cell and the traceback
        message = f"{name}: cell {progress.index} raised:\n{exc}"
    except CellTimeoutError as exc:
        reason = str(exc).splitlines()[0].rstrip(".")
        message = f"{name}: timed out: {reason}, {progress.where()}"
    except DeadKernelError:
        message = f"{name}: the kernel died, {progress.where()}"
    except Exception as exc:  # the kernel did not start or answer kernel_info
        message = f"{name}: {type(exc).__name__}: {exc}, {progress.where()}"
    raise NotebookRunError(message, progress.index, progress.pid)
