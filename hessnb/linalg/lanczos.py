"""Lanczos iteration with full re-orthogonalisation, in float64.

Pure linear algebra: the operator is a callable on tensors and nothing here knows about
``torch.nn``. Several independent probes run in lockstep so that one call of the block
operator (one pass over the data) serves all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hessnb.linalg.krylov import KrylovBasis
from hessnb.validation import check_positive_int

__all__ = ["LanczosResult", "lanczos", "lanczos_block"]

Matmat = Callable[[torch.Tensor], torch.Tensor]

#: Relative size of ``beta`` below which the Krylov space is taken to be invariant.
BREAKDOWN_TOL = 1e-12


@dataclass
class LanczosResult:
    """Tridiagonal matrices (and Krylov bases) from independent Lanczos runs.

    Attributes
    ----------
    alpha : torch.Tensor, shape (probes, steps), float64, on the CPU
        Diagonals of the tridiagonal matrices. Entries past ``lengths[p]`` are zero.
    beta : torch.Tensor, shape (probes, steps), float64, on the CPU
        ``beta[p, j]`` couples Lanczos vectors ``j`` and ``j + 1``; the entry at
        ``lengths[p] - 1`` is the norm of the final residual, which gives Ritz residuals
        ``|beta_m * U[m-1, j]|`` without another operator call.
    lengths : torch.Tensor, shape (probes,), int64
        Steps actually taken per probe (fewer than asked after a breakdown, which means an
        invariant subspace was found and the quadrature is exact).
    basis : KrylovBasis or None
        The orthonormal Lanczos vectors (probes, steps, dim), kept when asked for.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    lengths: torch.Tensor
    basis: KrylovBasis | None = None

    def tridiagonal(self, probe: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Diagonal ``(m,)`` and off-diagonal ``(m - 1,)`` of one probe's ``T_m``."""
        m = int(self.lengths[probe])
        return self.alpha[probe, :m], self.beta[probe, : m - 1]

    def dense_tridiagonal(self, probe: int = 0) -> torch.Tensor:
        """``T_m`` of one probe as a dense ``(m, m)`` float64 matrix."""
        a, b = self.tridiagonal(probe)
        return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def check_steps(dim: int, steps: int, name: str = "steps") -> int:
    """Lanczos steps: an int in ``1..dim`` (a Krylov space has at most ``dim`` dimensions)."""
    steps = check_positive_int(name, steps)
    if dim < 1:
        raise ValueError(f"operator dimension must be >= 1, got {dim}")
    if steps > dim:
        raise ValueError(
            f"{name} ({steps}) cannot exceed the operator dimension ({dim}, the number of "
            f"parameters): a Krylov space has at most {dim} dimensions; pass {name} <= {dim}"
        )
    return steps


def _starting_block(
    dim: int,
    probes: int,
    start: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Unit-norm start vectors as a ``(probes, dim)`` float64 tensor."""
    if start is None:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes must be an int >= 1, got {probes!r}")
        block = torch.randn(probes, dim, generator=generator, dtype=torch.float64)
    else:
        block = torch.as_tensor(start).detach().to(dtype=torch.float64, device="cpu")
        block = block.reshape(1, -1) if block.ndim == 1 else block.T
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(
                f"start vector has shape {tuple(torch.as_tensor(start).shape)} but the "
                f"operator has dimension {dim}; pass a ({dim},) vector or a ({dim}, probes) "
                "block"
            )
        if not torch.isfinite(block).all():
            raise ValueError("start vector contains NaN or inf; pass a finite vector")
    norms = block.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("start vector is zero; pass a non-zero vector (or start=None)")
    return (block / norms).to(device)


def lanczos_block(
    matmat: Matmat,
    dim: int,
    steps: int,
    *,
    probes: int = 1,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    placement: str = "device",
    device: torch.device | str | None = None,
    keep_basis: bool = True,
    callback: Callable[[int], None] | None = None,
) -> LanczosResult:
    """Run independent Lanczos iterations for several probes in lockstep.

    Parameters
    ----------
    matmat : callable
        Maps a float64 tensor of shape ``(dim, p)`` to ``A @ V`` of shape ``(dim, p)``
        for a symmetric ``A``; ``p`` shrinks when probes stop early.
    dim : int
        Dimension ``n`` of ``A``.
    steps : int
        Lanczos steps ``m`` per probe, ``1 <= m <= dim``.
    probes : int
        Number of random start vectors (ignored when ``start`` is given).
    start : torch.Tensor, optional
        Start vector ``(dim,)`` or block ``(dim, probes)``; normalised here. When omitted,
        Gaussian vectors from ``generator`` are used (drawn on the CPU, so the same seed
        gives the same probes on every device).
    generator : torch.Generator, optional
        CPU generator for the random start vectors.
    placement : {"device", "cpu", "mmap", "auto"}
        Where the ``(probes, steps, dim)`` float64 Krylov basis lives; see
        :class:`hessnb.linalg.krylov.KrylovBasis`.
    device : torch.device or str, optional
        Device of the vectors passed to ``matmat`` (default CPU).
    keep_basis : bool
        Return the basis (needed for Ritz vectors).
    callback : callable, optional
        Called with the step index after each step (progress bars).

    Returns
    -------
    LanczosResult
    """
    steps = check_steps(dim, steps)
    device = torch.device(device) if device is not None else torch.device("cpu")
    q = _starting_block(dim, probes, start, generator, device)
    n_probes = q.shape[0]
    krylov = KrylovBasis.allocate(n_probes, steps, dim, placement=placement, device=device)
    alpha = torch.zeros(n_probes, steps, dtype=torch.float64)
    beta = torch.zeros(n_probes, steps, dtype=torch.float64)
    lengths = torch.zeros(n_probes, dtype=torch.int64)
    active = torch.arange(n_probes)
    scale = torch.zeros(n_probes, dtype=torch.float64)  # running estimate of ||A||

    for j in range(steps):
        krylov.store(active, j, q)
        w = matmat(q.T.contiguous()).T.to(dtype=torch.float64)
        if w.shape != q.shape:
            raise ValueError(
                f"matmat returned shape {tuple(w.T.shape)} for input {tuple(q.T.shape)}; it "
                "must return A @ V with the same shape"
            )
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                f"operator returned NaN or inf at Lanczos step {j}; check the model and loss"
            )
        a = (w * q).sum(dim=1)
        alpha[active, j] = a.cpu()
        # Full re-orthogonalisation: two passes of classical Gram-Schmidt against every
        # stored vector (this also removes the alpha and beta components).
        w = krylov.orthogonalise(active, j + 1, w)
        w = krylov.orthogonalise(active, j + 1, w)
        b = w.norm(dim=1).cpu()
        lengths[active] = j + 1
        beta[active, j] = b
        scale[active] = torch.maximum(scale[active], a.abs().cpu() + b)
        if callback is not None:
            callback(j)
        if j == steps - 1:
            break
        alive = b > BREAKDOWN_TOL * torch.clamp(scale[active], min=1e-300)
        if not alive.all():
            beta[active[~alive], j] = 0.0
            active, w, b = active[alive], w[alive.to(w.device)], b[alive]
            if active.numel() == 0:
                break
        q = w / b.to(w.device)[:, None]
    return LanczosResult(alpha, beta, lengths, krylov if keep_basis else None)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    steps: int,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    placement: str = "device",
    device: torch.device | str | None = None,
) -> LanczosResult:
    """Lanczos with full re-orthogonalisation for one start vector.

    Parameters
    ----------
    matvec : callable
        Maps a float64 vector ``(dim,)`` to ``A @ v`` of shape ``(dim,)``.
    dim, steps, start, generator, placement, device
        As in :func:`lanczos_block` (``start`` of shape ``(dim,)``).

    Returns
    -------
    LanczosResult
        With one probe; ``result.tridiagonal(0)`` gives ``(alpha, beta)``.

    Examples
    --------
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> res = lanczos(lambda v: A @ v, dim=5, steps=5, generator=torch.Generator().manual_seed(0))
    >>> torch.linalg.eigvalsh(res.dense_tridiagonal()).round()
    tensor([1., 2., 3., 4., 5.], dtype=torch.float64)
    """

    def matmat(block: torch.Tensor) -> torch.Tensor:
        return torch.stack([matvec(block[:, i]) for i in range(block.shape[1])], dim=1)

    if start is not None and torch.as_tensor(start).ndim != 1:
        raise ValueError(
            f"lanczos takes a ({dim},) start vector; use lanczos_block for a block of probes"
        )
    return lanczos_block(
        matmat,
        dim,
        steps,
        probes=1,
        start=start,
        generator=generator,
        placement=placement,
        device=device,
    )
