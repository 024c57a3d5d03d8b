"""The k algebraically largest eigenpairs of a symmetric operator, warm-startable.

A dense record between full densities needs only the top-k Ritz pairs; started from the
previous record's vectors (``start``), an iterative eigensolver refines them instead of
running a cold Lanczos. Four solvers share one Rayleigh–Ritz step on an orthonormal
basis ``Q`` whose products ``A Q`` are kept, so Ritz residuals ``||A y - theta y||``
cost no extra operator calls; all stop when every residual is at most
``tol * |theta_1|`` or when ``max_matvecs`` products are spent:

- ``"krylov"``: thick-restarted block Krylov (block Lanczos with Rayleigh–Ritz over the
  whole basis). Each step adds the residuals of the Ritz pairs that have not converged
  (with a Krylov basis they span the next Krylov block), with full
  re-orthogonalisation; a full basis restarts from the top Ritz vectors and their
  products, at no operator cost.
- ``"lanczos"``: thick-restarted single-vector Lanczos with full re-orthogonalisation,
  from the sum of the start vectors plus a Gaussian vector of the same norm. One
  product per operator call, and fewest products on the Hessians of ``bench/topk.py``;
  but one Krylov vector holds a repeated eigenvalue only once, so exact multiplicities
  among the top k are missed (block methods find them).
- ``"lobpcg"``: locally optimal block preconditioned conjugate gradient (Knyazev 2001,
  without preconditioner), Rayleigh–Ritz on ``[X, R, P]`` in an orthonormal basis
  (Hetmaniuk & Lehoucq 2006; SVQB orthonormalisation, Stathopoulos & Wu 2002).
- ``"subspace"``: subspace iteration (block power) on ``A - sigma I`` with Rayleigh–Ritz,
  the shift ``sigma`` halfway between the lowest Ritz value seen (capped at 0) and the
  lowest Ritz value of the block, so that large negative eigenvalues do not take over.

A block of ``b`` columns given to ``matmat`` counts as ``b`` operator products
(``matvecs``); for a Hessian it is one pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hessnb.validation import check_positive_int

__all__ = ["DEFAULT_METHOD", "METHODS", "TopEigen", "top_eigenpairs"]

Matmat = Callable[[torch.Tensor], torch.Tensor]

#: The solvers :func:`top_eigenpairs` offers.
METHODS = ("krylov", "lanczos", "lobpcg", "subspace")
#: The solver used when none is named: the fewest HVPs and the least time per warm record
#: on the digits CNN through training (``python -m bench.topk``). A block method
#: (``"krylov"``) is the choice when the top k may hold a repeated eigenvalue.
DEFAULT_METHOD = "lanczos"
#: Extra columns beyond ``k`` per method when ``oversample`` is not given.
DEFAULT_OVERSAMPLE = {"krylov": 0, "lanczos": 2, "lobpcg": 0, "subspace": 5}
#: The krylov and lanczos bases restart beyond this many blocks of ``k + oversample``.
KRYLOV_BASIS_BLOCKS = 4
#: The krylov and lanczos bases restart at this many vectors at least.
MIN_BASIS = 30
#: Relative size below which a new direction counts as linearly dependent on the basis.
DEPENDENCE_TOL = 1e-7


@dataclass
class TopEigen:
    """The top-k Ritz pairs of a symmetric operator, largest first.

    Attributes
    ----------
    values : np.ndarray, shape (k,), float64
        Ritz values, descending (the algebraically largest eigenvalue estimates).
    vectors : torch.Tensor, shape (dim, k), float64
        Orthonormal Ritz vectors, column ``i`` for ``values[i]``, on ``device`` (the
        device of the vectors given to ``matmat``).
    residuals : np.ndarray, shape (k,), float64
        ``||A y_i - theta_i y_i||`` for each pair.
    matvecs : int
        Operator-vector products used (a block of ``b`` columns counts ``b``).
    iterations : int
        Rayleigh–Ritz steps taken.
    converged : bool
        Every residual is at most ``tol * |values[0]|``; False when ``max_matvecs`` ran
        out first.
    """

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    matvecs: int
    iterations: int
    converged: bool


# ----------------------------------------------------------------------------- shared steps
class Counter:
    """Applies ``matmat`` within a budget of operator products and counts them."""

    def __init__(self, matmat: Matmat, budget: int) -> None:
        self.matmat, self.budget, self.used = matmat, budget, 0

    @property
    def left(self) -> int:
        """Products still allowed."""
        return self.budget - self.used

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """``A @ block`` for a float64 ``(dim, b)`` block, as float64 on its device."""
        out = self.matmat(block.contiguous())
        out = torch.as_tensor(out)
        if tuple(out.shape) != tuple(block.shape):
            raise ValueError(
                f"matmat returned shape {tuple(out.shape)} for input {tuple(block.shape)}; "
                "it must return A @ V with the same shape"
            )
        out = out.to(device=block.device, dtype=torch.float64)
        if not torch.isfinite(out).all():
            raise FloatingPointError(
                "the operator returned NaN or inf; check the model and loss (or the matrix)"
            )
        self.used += block.shape[1]
        return out


@dataclass(frozen=True)
class Search:
    """What every solver is given besides its start block.

    Attributes
    ----------
    counter : Counter
        The operator within its product budget.
    width : int
        Block columns (``k + oversample``, capped at ``dim`` and the budget).
    k : int
        Pairs that must converge.
    tol : float
        Residual tolerance relative to ``|theta_1|``.
    generator : torch.Generator or None
        CPU generator for Gaussian columns.
    warm : int
        Leading columns of the start block that came from the caller's ``start``.
    """

    counter: Counter
    width: int
    k: int
    tol: float
    generator: torch.Generator | None
    warm: int = 0

    def unpack(self) -> tuple[Counter, int, int, float, torch.Generator | None]:
        """``(counter, width, k, tol, generator)``."""
        return self.counter, self.width, self.k, self.tol, self.generator


def orthonormalise(
    block: torch.Tensor,
    product: torch.Tensor | None = None,
    against: torch.Tensor | None = None,
    against_product: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Orthonormal columns spanning the part of ``block`` outside ``against``.

    Two rounds of: two passes of classical Gram–Schmidt against ``against``, then SVQB
    (eigenvectors of the Gram matrix, Stathopoulos & Wu 2002). The first round drops
    directions shorter than ``DEPENDENCE_TOL`` times their original length. When the
    products ``A block`` (and ``A against``) are given, the same linear combinations of
    them are returned, so no operator call is needed.

    Parameters
    ----------
    block : torch.Tensor, shape (dim, c)
    product : torch.Tensor, shape (dim, c), optional
        ``A @ block``.
    against : torch.Tensor, shape (dim, m), optional
        Orthonormal columns to project out.
    against_product : torch.Tensor, shape (dim, m), optional
        ``A @ against`` (needed when ``product`` is given).

    Returns
    -------
    q : torch.Tensor, shape (dim, r), r <= c
    q_product : torch.Tensor, shape (dim, r), or None
        ``A @ q`` when ``product`` was given.
    """
    if block.shape[1] == 0:
        return block, product
    # Columns scaled to unit original length, so the dependence test is relative.
    scale = 1.0 / torch.clamp(block.norm(dim=0), min=torch.finfo(torch.float64).tiny)
    block = block * scale
    product = None if product is None else product * scale
    for _ in range(2):
        if against is not None and against.shape[1] > 0:
            for _ in range(2):
                coeff = against.T @ block
                block = block - against @ coeff
                if product is not None:
                    product = product - against_product @ coeff
        gram = block.T @ block
        mass, basis = torch.linalg.eigh(0.5 * (gram + gram.T))
        keep = mass > DEPENDENCE_TOL**2
        transform = basis[:, keep] / torch.sqrt(mass[keep])
        block = block @ transform
        product = None if product is None else product @ transform
    return block, product


def random_block(
    dim: int, columns: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Gaussian ``(dim, columns)`` float64, drawn on the CPU (same seed, same block)."""
    return torch.randn(dim, columns, generator=generator, dtype=torch.float64).to(device)


class Ritz:
    """Rayleigh–Ritz on an orthonormal basis: all Ritz values, the top pairs' residuals.

    Parameters
    ----------
    basis, product : torch.Tensor, shape (dim, m)
        Orthonormal ``Q`` and ``A Q``.
    count : int
        Ritz vectors formed (the largest ``count``), ``k <= count <= m``.
    k : int
        Pairs that must converge.
    tol : float
        Residual tolerance relative to ``|theta_1|``.

    Attributes
    ----------
    theta : torch.Tensor, shape (m,)
        Ritz values, descending.
    coeff : torch.Tensor, shape (m, m)
        Ritz vectors in the basis, column ``i`` for ``theta[i]``.
    vectors, products, residual_vectors : torch.Tensor, shape (dim, count)
        ``Y``, ``A Y`` and ``A Y - Y diag(theta)`` of the top ``count``.
    residuals : torch.Tensor, shape (count,)
    done : torch.Tensor, shape (count,), bool
        Residual within tolerance.
    converged : bool
        The top ``k`` are all done.
    """

    def __init__(
        self, basis: torch.Tensor, product: torch.Tensor, count: int, k: int, tol: float
    ) -> None:
        projected = basis.T @ product
        theta, coeff = torch.linalg.eigh(0.5 * (projected + projected.T))
        self.theta, self.coeff = theta.flip(0), coeff.flip(1)
        self.vectors = basis @ self.coeff[:, :count]
        self.products = product @ self.coeff[:, :count]
        self.residual_vectors = self.products - self.vectors * self.theta[:count]
        self.residuals = self.residual_vectors.norm(dim=0)
        self.done = self.residuals <= tol * float(self.theta[0].abs())
        self.converged = bool(self.done[:k].all())

    def result(self, search: Search, iterations: int) -> TopEigen:
        """The top ``search.k`` pairs as a :class:`TopEigen`."""
        k = search.k
        return TopEigen(
            values=self.theta[:k].cpu().numpy().copy(),
            vectors=self.vectors[:, :k].contiguous(),
            residuals=self.residuals[:k].cpu().numpy().copy(),
            matvecs=search.counter.used,
            iterations=iterations,
            converged=self.converged,
        )


def new_directions(
    ritz: Ritz, basis: torch.Tensor, limit: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Orthonormal residual directions of the unconverged Ritz pairs outside ``basis``.

    At most ``limit`` columns, largest residuals first. When those residuals lie in the
    basis (it holds an invariant subspace but not yet the wanted vectors), random
    directions instead.
    """
    dim, room = basis.shape[0], min(limit, basis.shape[0] - basis.shape[1])
    if room <= 0:
        return basis[:, :0]
    pending = torch.nonzero(~ritz.done).flatten()
    order = pending[torch.argsort(ritz.residuals[pending], descending=True)][:room]
    fresh, _ = orthonormalise(ritz.residual_vectors[:, order], against=basis)
    if fresh.shape[1] == 0:
        fresh, _ = orthonormalise(random_block(dim, room, generator, basis.device), against=basis)
    return fresh[:, :room]


# ----------------------------------------------------------------------------- methods
def krylov(
    search: Search,
    block: torch.Tensor,
) -> TopEigen:
    """Thick-restarted block Krylov with soft locking (see the module docstring)."""
    counter, width, k, tol, generator = search.unpack()
    dim = block.shape[0]
    capacity = min(dim, max(MIN_BASIS, KRYLOV_BASIS_BLOCKS * width))
    basis, product = block, counter(block)
    iterations = 0
    while True:
        ritz = Ritz(basis, product, min(width, basis.shape[1]), k, tol)
        iterations += 1
        if ritz.converged or basis.shape[1] == dim or counter.left == 0:
            return ritz.result(search, iterations)
        if basis.shape[1] + width > capacity:  # thick restart: no operator call
            keep = ritz.coeff[:, : max(width, capacity // 2)]
            basis, product = orthonormalise(basis @ keep, product @ keep)
        fresh = new_directions(ritz, basis, min(width, counter.left), generator)
        if fresh.shape[1] == 0:
            return ritz.result(search, iterations)
        basis = torch.cat([basis, fresh], dim=1)
        product = torch.cat([product, counter(fresh)], dim=1)


def lobpcg(
    search: Search,
    block: torch.Tensor,
) -> TopEigen:
    """LOBPCG without preconditioner, orthonormal basis, soft locking."""
    counter, width, k, tol, generator = search.unpack()
    ritz = Ritz(block, counter(block), block.shape[1], k, tol)
    p = ap = None
    iterations = 1
    while not ritz.converged and counter.left > 0:
        basis, product = ritz.vectors, ritz.products
        held = basis.shape[1]
        if p is not None:
            p, ap = orthonormalise(p, ap, basis, product)
            basis, product = torch.cat([basis, p], dim=1), torch.cat([product, ap], dim=1)
        w = new_directions(ritz, basis, min(width, counter.left), generator)
        if w.shape[1] == 0:  # [X, P] fills the space: Rayleigh–Ritz on it is exact
            count = min(width, basis.shape[1])
            return Ritz(basis, product, count, k, tol).result(search, iterations + 1)
        basis = torch.cat([basis, w], dim=1)
        product = torch.cat([product, counter(w)], dim=1)
        ritz = Ritz(basis, product, min(width, basis.shape[1]), k, tol)
        iterations += 1
        # The next search directions: the part of the new Ritz vectors outside span(X).
        tail = ritz.coeff[held:, : ritz.vectors.shape[1]]
        p, ap = basis[:, held:] @ tail, product[:, held:] @ tail
    return ritz.result(search, iterations)


def subspace(
    search: Search,
    block: torch.Tensor,
) -> TopEigen:
    """Subspace iteration on ``A - sigma I`` with Rayleigh–Ritz (see the module docstring)."""
    counter, width, k, tol, generator = search.unpack()
    dim = block.shape[0]
    if block.shape[1] < width:
        noise = random_block(dim, width - block.shape[1], generator, block.device)
        block = torch.cat([block, orthonormalise(noise, against=block)[0]], dim=1)
    basis, product = block, counter(block)
    lowest = 0.0
    iterations = 0
    while True:
        ritz = Ritz(basis, product, width, k, tol)
        iterations += 1
        if ritz.converged or counter.left < width:
            return ritz.result(search, iterations)
        lowest = min(lowest, float(ritz.theta[-1]))
        shift = 0.5 * (lowest + float(ritz.theta[-1]))
        basis, _ = orthonormalise(ritz.products - shift * ritz.vectors)
        if basis.shape[1] < width:  # an invariant subspace smaller than the block
            noise = random_block(dim, width - basis.shape[1], generator, block.device)
            basis = torch.cat([basis, orthonormalise(noise, against=basis)[0]], dim=1)
        product = counter(basis)


def lanczos(
    search: Search,
    block: torch.Tensor,
) -> TopEigen:
    """Thick-restarted single-vector Lanczos, full re-orthogonalisation.

    The start vector is the normalised sum of the ``warm`` start columns plus a Gaussian
    vector of the same norm (a cold start: Gaussian). One operator product per step; Ritz
    residuals come from the Lanczos relation ``A Q = Q H + r e_m^T`` (``|beta u_mi|``),
    the returned ones from the stored products.
    """
    counter, width, k, tol, generator = search.unpack()
    warm = search.warm
    dim = block.shape[0]
    capacity = min(dim, max(MIN_BASIS, KRYLOV_BASIS_BLOCKS * width))
    noise = random_block(dim, 1, generator, block.device)
    q = noise / noise.norm()
    if warm:
        mean = block[:, :warm].sum(dim=1, keepdim=True)
        q = mean / mean.norm() + q
    q = q / q.norm()
    basis, product = block[:, :0], block[:, :0]
    projected = torch.zeros(0, 0, dtype=torch.float64, device=block.device)
    iterations = 0
    while True:
        aq = counter(q)
        column = (torch.cat([basis, q], dim=1).T @ aq).flatten()
        basis, product = torch.cat([basis, q], dim=1), torch.cat([product, aq], dim=1)
        size = basis.shape[1]
        grown = torch.zeros(size, size, dtype=torch.float64, device=block.device)
        grown[:-1, :-1], grown[:, -1], grown[-1, :] = projected, column, column
        projected = grown
        nxt, _ = orthonormalise(aq, against=basis)
        beta = float((nxt.T @ aq).norm()) if nxt.shape[1] else 0.0
        if size >= min(k, dim):
            theta, coeff = torch.linalg.eigh(projected)
            theta, coeff = theta.flip(0), coeff.flip(1)
            iterations += 1
            estimates = beta * coeff[-1, :k].abs()
            if bool((estimates <= tol * float(theta[0].abs())).all()) or size == dim:
                break
        # Products so far >= size, so a spent budget leaves at least k vectors.
        if counter.left == 0:
            break
        if nxt.shape[1] == 0:  # an invariant subspace: continue from a fresh direction
            nxt, _ = orthonormalise(random_block(dim, 1, generator, block.device), against=basis)
        if size == capacity:  # thick restart: keep the top Ritz vectors, no operator call
            keep = coeff[:, : min(size - 1, max(width, capacity // 2))]
            basis, product = basis @ keep, product @ keep
            projected = basis.T @ product
            projected = 0.5 * (projected + projected.T)
            nxt, _ = orthonormalise(nxt, against=basis)
        q = nxt
    return Ritz(basis, product, min(width, basis.shape[1]), k, tol).result(search, iterations)


SOLVERS = {"krylov": krylov, "lanczos": lanczos, "lobpcg": lobpcg, "subspace": subspace}


# ----------------------------------------------------------------------------- entry point
def check_start(start: torch.Tensor | np.ndarray, dim: int, k: int) -> torch.Tensor:
    """``start`` as a float64 ``(dim, j)`` tensor, ``1 <= j <= k``, finite and non-zero."""
    block = torch.as_tensor(start).detach()
    if block.ndim != 2 or block.shape[0] != dim or not 1 <= block.shape[1] <= k:
        raise ValueError(
            f"start has shape {tuple(block.shape)}; pass the previous ({dim}, {k}) vectors "
            f"(or ({dim}, j) with j <= {k}; missing columns are drawn at random) or None"
        )
    block = block.to(torch.float64)
    if not torch.isfinite(block).all():
        raise ValueError("start contains NaN or inf; pass finite vectors (or start=None)")
    if not (block != 0).any():
        raise ValueError("start is all zeros; pass non-zero vectors (or start=None)")
    return block


def top_eigenpairs(
    matmat: Matmat,
    dim: int,
    k: int,
    *,
    start: torch.Tensor | np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    oversample: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TopEigen:
    """The ``k`` algebraically largest eigenpairs of a symmetric operator.

    Parameters
    ----------
    matmat : callable
        Maps a float64 tensor ``V`` of shape ``(dim, b)`` to ``A @ V`` of shape
        ``(dim, b)`` for a symmetric ``A`` (e.g. ``hessnb.linalg.as_operator(op).matmat``).
    dim : int
        Dimension of ``A``.
    k : int
        Number of pairs, ``1 <= k <= dim``.
    start : torch.Tensor or np.ndarray, shape (dim, j), optional
        Warm start, ``1 <= j <= k``: typically the previous record's vectors. The block
        methods fill it up to ``k`` columns (``"subspace"``: ``k + oversample``) with
        Gaussian ones; ``"lanczos"`` starts from their sum plus a Gaussian vector. None: a
        cold start from Gaussian vectors.
    method : {"lanczos", "krylov", "lobpcg", "subspace"}
        The solver (see the module docstring). ``"lanczos"`` (the default) uses the fewest
        products but misses repeated copies of an eigenvalue; the block methods find them
        and use fewer operator calls (passes) for more products.
    tol : float
        Stop when every residual ``||A y_i - theta_i y_i||`` is at most
        ``tol * |theta_1|``.
    max_matvecs : int, optional
        Stop (with ``converged=False``) rather than use more operator products; at least
        ``k``. Default ``max(300, 30 * (k + oversample))``.
    oversample : int, optional
        Ritz pairs tracked beyond ``k``: extra block columns (they speed up ``lambda_k``
        when ``lambda_{k+1}`` is close), and for ``"lanczos"`` extra Ritz vectors kept at
        a restart; default ``DEFAULT_OVERSAMPLE[method]``, capped at ``dim`` and
        ``max_matvecs``.
    generator : torch.Generator, optional
        CPU generator for the Gaussian columns.
    device : torch.device or str, optional
        Device of the vectors given to ``matmat``; default the device of ``start``, else
        the CPU.

    Returns
    -------
    TopEigen
        Values descending, vectors ``(dim, k)`` on ``device``.

    Raises
    ------
    ValueError
        If ``k > dim``, ``start`` has the wrong shape or is non-finite or zero, ``tol`` is
        not a positive finite number, ``method`` is unknown, ``max_matvecs < k`` or
        ``oversample < 0``; or if ``matmat`` returns the wrong shape.
    FloatingPointError
        If ``matmat`` returns NaN or inf.

    Examples
    --------
    >>> import torch
    >>> a = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> top = top_eigenpairs(lambda v: a @ v, 100, 3, generator=torch.Generator().manual_seed(0))
    >>> top.values.round(3).tolist(), top.converged
    ([100.0, 99.0, 98.0], True)
    """
    dim = check_positive_int("dim", dim)
    k = check_positive_int("k", k)
    if k > dim:
        raise ValueError(f"k ({k}) cannot exceed the operator dimension ({dim}); pass k <= {dim}")
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0 (a residual relative to |lambda_1|), got {tol}")
    if oversample is None:
        oversample = DEFAULT_OVERSAMPLE[method]
    elif isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)):
        raise TypeError(f"oversample must be an int, got {type(oversample).__name__}")
    elif oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    if max_matvecs is None:
        max_matvecs = max(300, 30 * (k + int(oversample)))
    max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    if max_matvecs < k:
        raise ValueError(
            f"max_matvecs ({max_matvecs}) must be >= k ({k}): the first block product alone takes k"
        )
    given = None if start is None else check_start(start, dim, k)
    if device is None:
        device = given.device if isinstance(given, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    width = min(dim, max_matvecs, k + int(oversample))

    # A warm start's own columns go first; Gaussian columns fill up to k (and, for a cold
    # start, to the whole block; the krylov and lobpcg bases grow from residuals anyway).
    first = width if given is None else k
    block = torch.zeros(dim, 0, dtype=torch.float64, device=device)
    if given is not None:
        block, _ = orthonormalise(given.to(device))
    warm = block.shape[1]
    noise = random_block(dim, first - warm, generator, device)
    block = torch.cat([block, orthonormalise(noise, against=block)[0]], dim=1)
    search = Search(Counter(matmat, max_matvecs), width, k, float(tol), generator, warm)
    return SOLVERS[method](search, block)
