"""Where the float64 Krylov basis can live, and whether a run fits: one placement policy.

A Lanczos run with full re-orthogonalisation keeps every Lanczos vector: ``probes x steps x
n_params`` float64 numbers (8 GB for ResNet-18 at 90 steps). :func:`plan_memory` states
what a run needs on each resource and picks the placement; :class:`KrylovBasis` uses the
same :func:`choose_placement` for ``placement="auto"``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

__all__ = [
    "HEADROOM",
    "PLACEMENTS",
    "MemoryPlan",
    "available_bytes",
    "choose_placement",
    "human_bytes",
    "krylov_bytes",
    "plan_memory",
]

PLACEMENTS = ("device", "cpu", "mmap", "auto")
#: ``"auto"`` wants this many times the needed bytes free before it picks a placement.
HEADROOM = 1.25
_RESOURCE = {"device": "GPU", "cpu": "RAM", "disk": "disk"}


def krylov_bytes(probes: int, steps: int, dim: int) -> int:
    """Bytes of a float64 Krylov basis of shape ``(probes, steps, dim)``."""
    return 8 * probes * steps * dim


def human_bytes(nbytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def available_bytes(where: str, device: torch.device | None = None) -> int:
    """Free bytes: ``"device"`` (a CUDA device's memory), ``"cpu"`` (RAM) or ``"disk"``.

    ``"disk"`` is the free space of the temporary folder (where ``mmap`` bases go); RAM is
    ``MemAvailable`` (free plus reclaimable page cache) where Linux reports it.
    """
    if where == "disk":
        return shutil.disk_usage(tempfile.gettempdir()).free
    if where == "device" and device is not None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if where == "cpu" or device is None or device.type == "cpu":
        return _available_ram()
    return 2**62  # other accelerators: no portable query; trust the user


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**62


def requirements(
    placement: str, basis: int, working: int, device: torch.device, processes: int = 1
) -> dict[str, int]:
    """Bytes needed per resource (GPU figures per process: one GPU each).

    Parameters
    ----------
    placement : {"device", "cpu", "mmap"}
    basis : int
        Bytes of one process's Krylov basis.
    working : int
        Bytes of one process's work vectors on ``device``.
    device : torch.device
        Where the vectors live.
    processes : int
        Processes on this machine (they share RAM and disk).
    """
    gpu = device.type == "cuda"
    needs = {"device": working} if gpu else {"cpu": working * processes}
    if placement == "device" and gpu:
        needs["device"] += basis
    elif placement in ("device", "cpu"):
        needs["cpu"] = needs.get("cpu", 0) + basis * processes
    else:
        needs["disk"] = basis * processes
    return needs


def _free(device: torch.device) -> dict[str, int]:
    return {
        "device": available_bytes("device", device) if device.type == "cuda" else 0,
        "cpu": available_bytes("cpu"),
        "disk": available_bytes("disk"),
    }


def choose_placement(
    basis: int,
    device: torch.device,
    *,
    working: int = 0,
    processes: int = 1,
    free: dict[str, int] | None = None,
) -> str | None:
    """The first of device, cpu, mmap whose needs fit with :data:`HEADROOM`, else None."""
    free = _free(device) if free is None else free
    for placement in ("device", "cpu", "mmap"):
        needs = requirements(placement, basis, working, device, processes)
        if all(HEADROOM * v <= free[k] for k, v in needs.items()):
            return placement
    return None


@dataclass
class MemoryPlan:
    """Where the Krylov basis goes, what the run needs and what is free.

    Attributes
    ----------
    placement : {"device", "cpu", "mmap"}
        The chosen placement of the basis.
    basis_bytes : int
        Bytes of one process's basis (``probes x steps x n_params x 8``).
    working_bytes : int
        Approximate bytes of float64 work vectors (and model copies) per process on
        ``device``, activations of a batch not included.
    processes : int
        Processes on this machine (they share its RAM and disk).
    needs, free : dict
        Bytes needed and free per resource (``"device"``, ``"cpu"``, ``"disk"``).
    """

    placement: str
    basis_bytes: int
    working_bytes: int
    processes: int
    device: torch.device
    needs: dict[str, int] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One paragraph for the user: what goes where, needed vs free."""
        gpu = self.device.type == "cuda"
        where = {
            "device": f"{self.device} memory" if gpu else "RAM",
            "cpu": "pinned RAM" if gpu else "RAM",
            "mmap": f"a memory-mapped file in {tempfile.gettempdir()}",
        }[self.placement]
        each = f" per process, {self.processes} processes" if self.processes > 1 else ""
        parts = [
            f"Krylov basis {human_bytes(self.basis_bytes)} in {where}{each}",
            f"about {human_bytes(self.working_bytes)} of work vectors on {self.device}",
        ]
        totals = _totals(self.needs, self.free)
        return f"memory: {'; '.join(parts)} (+ activations of one batch). {totals}"


def _totals(needs: dict[str, int], free: dict[str, int]) -> str:
    return ", ".join(
        f"{_RESOURCE[k]} {human_bytes(v)} needed / {human_bytes(free[k])} free"
        for k, v in needs.items()
    )


def plan_memory(
    n_params: int,
    steps: int,
    probes: int,
    top_k: int,
    placement: str,
    device: torch.device,
    processes: int = 1,
    param_bytes: int = 4,
) -> MemoryPlan:
    """Choose the basis placement and check that the run fits, before it starts.

    Parameters
    ----------
    n_params, steps, probes, top_k : int
        Size of the problem (Lanczos steps, probes, kept Ritz vectors).
    placement : {"device", "cpu", "mmap", "auto"}
        Requested placement; ``auto`` takes the first that fits (:func:`choose_placement`).
    device : torch.device
        Where the model runs.
    processes : int
        Processes on this machine (torchrun's local world size), which share RAM and disk.
    param_bytes : int
        Bytes per model parameter (4 for float32).

    Raises
    ------
    MemoryError
        When the requested placement (or, for ``auto``, every placement) does not fit; the
        message names the needed and free sizes and the options that would fit.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    basis = krylov_bytes(probes, steps, n_params)
    # Lanczos q, w and Gram-Schmidt temporaries, products, tangents, Ritz vectors, g, Hg,
    # in float64; the model's parameters, gradients and first-backward graph.
    working = 8 * n_params * (6 * probes + top_k + 4) + 4 * param_bytes * n_params
    free = _free(device)
    options = {p: requirements(p, basis, working, device, processes) for p in PLACEMENTS[:3]}
    if placement == "auto":
        chosen = choose_placement(basis, device, working=working, processes=processes, free=free)
    else:
        fits = all(v <= free[k] for k, v in options[placement].items())
        chosen = placement if fits else None
    if chosen is None:
        raise MemoryError(_refusal(placement, options, free, basis, n_params, steps, probes))
    needs = options[chosen]
    return MemoryPlan(chosen, basis, working, processes, device, needs, {k: free[k] for k in needs})


def _refusal(
    placement: str,
    options: dict[str, dict[str, int]],
    free: dict[str, int],
    basis: int,
    n_params: int,
    steps: int,
    probes: int,
) -> str:
    head = (
        f"the run does not fit in memory: the float64 Krylov basis is {human_bytes(basis)} "
        f"per process ({probes} probe(s) x {steps} steps x {n_params:,} parameters x 8 "
        "bytes)"
    )
    others = "; ".join(
        f"--placement {p}: {_totals(options[p], free)}" for p in options if p != placement
    )
    if placement != "auto":
        return (
            f"{head}, and --placement {placement} needs {_totals(options[placement], free)}. "
            f"Change the option: {others}; or lower --lanczos-steps / --probes"
        )
    return (
        f"{head}, and no placement has room ({others}). Free memory or disk (--placement "
        "mmap writes to $TMPDIR: point it at a larger disk), or lower --lanczos-steps / "
        "--probes"
    )
