"""The preconditioned Hessian ``P^{-1/2} H P^{-1/2}``: the curvature an adaptive optimizer sees.

An optimizer with a diagonal preconditioner ``P`` (Adam's ``sqrt(v_hat) + eps``) takes the
step ``delta_theta = -lr P^{-1} m``. In the coordinates ``phi = P^{1/2} theta`` that is a
plain (momentum) gradient step ``delta_phi = -lr D m`` with ``D = P^{-1/2}``, on a loss
whose gradient is ``D g`` and whose Hessian is ``D H D``. So ``D H D`` is the curvature
that decides the optimizer's stability (its top eigenvalue is the *preconditioned
sharpness* of Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"); it
is similar to ``P^{-1} H`` and has the same eigenvalues.

:class:`PreconditionedOperator` wraps any hessnb operator with a positive diagonal ``P``;
:func:`adam_preconditioner` reads ``P`` from a ``torch.optim.Adam`` / ``AdamW`` /
``NAdam`` / ``Adamax`` optimizer's state. ``P`` is frozen when the wrapper is built: build a
new one (:meth:`PreconditionedOperator.from_adam`) after further optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hessnb.errors import HessnbError
from hessnb.hessian.operator import DENSE_LIMIT
from hessnb.linalg.operator import as_operator

__all__ = ["PreconditionedOperator", "PreconditionerError", "adam_preconditioner"]

#: Attributes of a ``HessianOperator`` (or other inner operator) that the wrapper passes
#: through unchanged: names, layout and data description, nothing that depends on ``P``.
PASSTHROUGH = frozenset(
    {
        "names",
        "space",
        "model",
        "flatten",
        "unflatten",
        "bn_mode",
        "curvature",
        "batch_sizes",
        "has_batchnorm",
        "n_examples",
        "hvp",
        "data_passes",
        "graph_cache_info",
    }
)

#: Optimizers whose state holds Adam's second moment but whose update does not divide by
#: ``sqrt(v_hat) + eps``, with the reason.
UNSUPPORTED = {
    "RAdam": (
        "RAdam rectifies its adaptive step (and takes un-preconditioned steps while the "
        "variance estimate is unreliable), so its update does not divide by sqrt(v_hat) + eps"
    ),
    "SparseAdam": (
        "SparseAdam divides by sqrt(v) + eps before bias correction, which is not Adam's diagonal"
    ),
}


class PreconditionerError(HessnbError, ValueError):
    """An optimizer gives no diagonal preconditioner for the operator's parameters."""


class PreconditionedOperator:
    """The symmetric operator ``D A D`` with ``D = P^{-1/2}`` for a positive diagonal ``P``.

    Its eigenvalues are those of ``P^{-1} A`` (a similar matrix). With ``A`` the Hessian and
    ``P`` an adaptive optimizer's per-coordinate denominator, it is the Hessian in the
    coordinates ``phi = P^{1/2} theta`` in which the optimizer takes plain gradient steps.

    Parameters
    ----------
    op : operator
        A :class:`~hessnb.HessianOperator`, or anything
        :func:`hessnb.linalg.as_operator` accepts (a dense symmetric array, a scipy or
        curvlinops operator, a :class:`~hessnb.linalg.MatrixOperator`, ...), of shape
        ``(n, n)``.
    diagonal : torch.Tensor or array, shape (n,)
        ``P``, finite and positive, in the operator's coordinate order (for a
        ``HessianOperator``: its ``names`` order, each parameter flattened). Stored as
        float64 on the operator's device.
    attrs : mapping, optional
        Provenance describing ``P`` (default ``{"preconditioner": "diagonal"}``); added to
        the inner operator's :meth:`provenance`.

    Attributes
    ----------
    inner : object
        The wrapped operator, as passed.
    diagonal : torch.Tensor, shape (n,)
        ``P`` (float64).
    scale : torch.Tensor, shape (n,)
        ``D = P^{-1/2}`` (float64).
    device : torch.device
        Where the products live (the inner operator's device).

    Notes
    -----
    ``names``, ``space``, ``model``, ``flatten``, ``unflatten``, ``bn_mode``, ``curvature``,
    ``batch_sizes``, ``has_batchnorm``, ``n_examples``, ``hvp``, ``data_passes`` and
    ``graph_cache_info`` are passed through from the inner operator when it has them (they
    describe the parameters and data, not ``P``). :meth:`gradient` and
    :meth:`evaluate` return the gradient in the preconditioned coordinates, ``D g``.

    Examples
    --------
    >>> import torch, hessnb
    >>> from hessnb.hessian.preconditioned import PreconditionedOperator
    >>> op = PreconditionedOperator(torch.diag(torch.tensor([2.0, 6.0])), torch.tensor([4.0, 2.0]))
    >>> op.dense()
    tensor([[0.5000, 0.0000],
            [0.0000, 3.0000]], dtype=torch.float64)
    """

    def __init__(
        self,
        op: Any,
        diagonal: torch.Tensor | np.ndarray | Sequence[float],
        *,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.inner = op
        self._operator = as_operator(op)
        self.device = self._operator.device
        self.diagonal = _check_diagonal(diagonal, self._operator.dim, type(op).__name__).to(
            self.device
        )
        self.scale = self.diagonal.rsqrt()
        self._attrs = dict(attrs) if attrs is not None else {"preconditioner": "diagonal"}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_adam(
        cls,
        op: Any,
        optimizer: torch.optim.Optimizer,
        *,
        eps: float | None = None,
        bias_correction: bool = True,
        params: Sequence[torch.Tensor] | None = None,
    ) -> PreconditionedOperator:
        """Wrap ``op`` with the diagonal an Adam-type ``optimizer`` divides its step by.

        Parameters
        ----------
        op : HessianOperator or operator
            The Hessian; its parameters are looked up in ``optimizer`` by identity.
        optimizer : torch.optim.Optimizer
            ``Adam``, ``AdamW``, ``NAdam`` or ``Adamax``, after at least one ``step()``.
        eps, bias_correction
            As for :func:`adam_preconditioner`.
        params : sequence of tensors, optional
            The operator's parameters in its coordinate order, for an operator that does not
            expose them (anything but a ``HessianOperator``).

        Returns
        -------
        PreconditionedOperator
            With provenance ``preconditioner`` (``"adam"`` or ``"adamax"``),
            ``preconditioner_optimizer`` (the class name), ``preconditioner_eps`` (the
            epsilon used: one number, or one per parameter group when they differ) and
            ``preconditioner_bias_correction``.

        Raises
        ------
        PreconditionerError
            See :func:`adam_preconditioner`.
        """
        diagonal, attrs = _adam_diagonal(
            optimizer, op if params is None else params, eps=eps, bias_correction=bias_correction
        )
        return cls(op, diagonal, attrs=attrs)

    # ------------------------------------------------------------------ description
    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self._operator.dim, self._operator.dim)

    @property
    def n_params(self) -> int:
        """The dimension ``n`` (the number of parameters for a ``HessianOperator``)."""
        return self._operator.dim

    def provenance(self) -> dict[str, Any]:
        """The inner operator's provenance plus the preconditioner's (``preconditioner``...)."""
        return {**self._operator.provenance(), **self._attrs}

    def __repr__(self) -> str:
        kind = self._attrs.get("preconditioner", "diagonal")
        return f"PreconditionedOperator({self.inner!r}, preconditioner={kind!r}, n={self.n_params})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in PASSTHROUGH:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        try:
            return getattr(self.inner, name)
        except AttributeError:
            raise AttributeError(
                f"the wrapped {type(self.inner).__name__} has no {name!r}, so neither does "
                "the PreconditionedOperator around it"
            ) from None

    # ------------------------------------------------------------------ numerics
    def matmat(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``D A D V`` for ``V`` of shape ``(n, k)``; float64 ``(n, k)`` on :attr:`device`.

        One block product of the inner operator (one pass over the data for a
        ``HessianOperator``).
        """
        block = self._as_block(vectors, ndim=2)
        scale = self.scale[:, None]
        return scale * self._operator.matmat(scale * block)

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``D A D v`` for a flat ``v`` of shape ``(n,)``; float64 ``(n,)``."""
        return self.matmat(self._as_block(v, ndim=1)[:, None])[:, 0]

    def __matmul__(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.matmat(vectors) if np.ndim(vectors) == 2 else self.matvec(vectors)

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The matrix ``D A D``, ``(n, n)`` float64, symmetrised.

        Uses the inner operator's ``dense()`` when it has one, else its block products on
        the identity (``n / chunk`` products, inside :meth:`reuse_graphs`).

        Raises
        ------
        ValueError
            Above ``hessnb.hessian.operator.DENSE_LIMIT`` (20,000) dimensions.
        """
        n = self.n_params
        if n > DENSE_LIMIT:
            raise ValueError(
                f"dense() forms an {n} x {n} matrix; it is meant for at most {DENSE_LIMIT} "
                "dimensions. Use hessnb.spectrum(op) instead"
            )
        inner_dense = getattr(self.inner, "dense", None)
        if callable(inner_dense):
            full = torch.as_tensor(inner_dense()).to(device=self.device, dtype=torch.float64)
        else:
            eye = torch.eye(n, dtype=torch.float64, device=self.device)
            with self.reuse_graphs():
                cols = [self._operator.matmat(eye[:, i : i + chunk]) for i in range(0, n, chunk)]
            full = torch.cat(cols, dim=1)
        full = self.scale[:, None] * full * self.scale[None, :]
        return 0.5 * (full + full.T)

    @contextlib.contextmanager
    def reuse_graphs(self) -> Iterator[PreconditionedOperator]:
        """The inner operator's ``reuse_graphs()`` (its graph cache), if it has one.

        :func:`hessnb.spectrum` enters this for a Lanczos run, so a wrapped
        ``HessianOperator`` keeps each batch's graphs across the run exactly as unwrapped.
        """
        with self._operator.reuse():
            yield self

    def reuse(self) -> contextlib.AbstractContextManager[Any]:
        """Alias of :meth:`reuse_graphs` (the name :class:`hessnb.linalg.Operator` uses)."""
        return self.reuse_graphs()

    # ------------------------------------------------------------------ coordinates
    def scale_gradient(self, gradient: torch.Tensor) -> torch.Tensor:
        """A gradient (covector) ``g`` in the preconditioned coordinates: ``D g``, shape (n,)."""
        return self.scale * self._as_block(gradient, ndim=1)

    def scale_update(self, update: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """A parameter displacement in the preconditioned coordinates: ``P^{1/2} delta``.

        Parameters
        ----------
        update : torch.Tensor, shape (n,), or list of tensors
            An optimizer's update ``theta_new - theta_old`` (flat, or one tensor per
            parameter when the inner operator has ``flatten``). For Adam,
            ``P^{1/2} delta = -lr D m_hat``: a gradient step in these coordinates.

        Returns
        -------
        torch.Tensor, shape (n,)
            Float64 on :attr:`device`.
        """
        if not isinstance(update, torch.Tensor):
            update = self.flatten(list(update))
        return self.diagonal.sqrt() * self._as_block(update, ndim=1)

    def gradient(self) -> torch.Tensor:
        """The inner operator's full-dataset gradient in these coordinates, ``D g``, (n,)."""
        return self.scale_gradient(self._inner_method("gradient")())

    def evaluate(self, gradient: bool = False) -> dict[str, Any]:
        """The inner operator's ``evaluate``; its ``gradient`` (when asked for) is ``D g``."""
        out = dict(self._inner_method("evaluate")(gradient=gradient))
        if gradient:
            out["gradient"] = self.scale_gradient(out["gradient"])
        return out

    def _inner_method(self, name: str) -> Any:
        method = getattr(self.inner, name, None)
        if not callable(method):
            raise AttributeError(
                f"{name}() needs a wrapped HessianOperator (a model and data); the wrapped "
                f"{type(self.inner).__name__} has no {name}()"
            )
        return method

    def _as_block(self, v: torch.Tensor | np.ndarray, ndim: int) -> torch.Tensor:
        t = torch.as_tensor(v)
        n = self.n_params
        if t.ndim != ndim or t.shape[0] != n:
            want = f"({n},)" if ndim == 1 else f"({n}, k)"
            raise ValueError(
                f"expected a vector of shape {want} for this operator, got {tuple(t.shape)}"
            )
        return t.to(device=self.device, dtype=torch.float64)


def _check_diagonal(diagonal: Any, n: int, what: str) -> torch.Tensor:
    """``diagonal`` as a flat float64 tensor, checked to be ``(n,)``, finite and positive."""
    p = torch.as_tensor(
        np.asarray(diagonal) if not isinstance(diagonal, torch.Tensor) else diagonal
    ).detach()
    if not (p.is_floating_point() or p.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"the diagonal must hold real numbers, got dtype {p.dtype}")
    p = p.to(torch.float64)
    if p.ndim != 1 or p.numel() != n:
        raise ValueError(
            f"the diagonal has shape {tuple(p.shape)} but the {what} has dimension {n}; pass "
            f"a flat vector of {n} numbers in the operator's coordinate order"
        )
    finite = torch.isfinite(p)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(
            f"the diagonal has {bad} non-finite entries (the first at index {first}); P must "
            "be finite and positive. An optimizer whose state holds NaN or inf has diverged"
        )
    positive = p > 0
    if not bool(positive.all()):
        bad = int((~positive).sum())
        first = int(torch.nonzero(~positive)[0, 0])
        raise ValueError(
            f"the diagonal has {bad} entries <= 0 (the first, index {first}, is "
            f"{float(p[first])}); P must be positive. For Adam, P = sqrt(v_hat) + eps is "
            "positive when eps > 0: keep eps > 0"
        )
    return p


# ---------------------------------------------------------------------- Adam's diagonal
def _operator_parameters(op: Any) -> list[torch.Tensor]:
    """The parameters ``op`` is over, in its coordinate order, as the user's tensors.

    A ``HessianOperator`` with ``dtype=`` works on a private copy of the model; the
    optimizer holds the user's parameters, so they are looked up by name in
    ``space.source``.
    """
    if isinstance(op, (list, tuple)):
        if not op or not all(isinstance(p, torch.Tensor) for p in op):
            raise TypeError("params must be a non-empty list of the operator's parameters")
        return list(op)
    space = getattr(op, "space", None)
    names, source = getattr(space, "names", None), getattr(space, "source", None)
    if names is None or source is None:
        raise TypeError(
            f"a {type(op).__name__} does not say which parameters it is over; pass a "
            "HessianOperator, or the operator's parameters in its coordinate order "
            "(params=[...])"
        )
    by_name = dict(source.named_parameters())
    return [by_name[name] for name in names]


def _parameter_names(op: Any, count: int) -> list[str]:
    names = getattr(getattr(op, "space", None), "names", None)
    return list(names) if names is not None else [f"parameter {i}" for i in range(count)]


def _adam_diagonal(
    optimizer: torch.optim.Optimizer,
    op: Any,
    *,
    eps: float | None = None,
    bias_correction: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`adam_preconditioner` and the provenance attributes describing it.

    Returns
    -------
    diagonal : torch.Tensor, shape (n,)
        ``P`` (float64).
    attrs : dict
        ``preconditioner``, ``preconditioner_optimizer``, ``preconditioner_eps``,
        ``preconditioner_bias_correction``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    kind = type(optimizer).__name__
    if kind in UNSUPPORTED:
        raise PreconditionerError(
            f"{kind} is not supported: {UNSUPPORTED[kind]}. Use Adam, AdamW, NAdam or Adamax, "
            "or compute your own diagonal and pass it to PreconditionedOperator(op, diagonal)"
        )
    adamax = isinstance(optimizer, torch.optim.Adamax)
    if eps is not None:
        if adamax:
            raise PreconditionerError(
                "Adamax adds its eps inside the running maximum exp_inf (P = exp_inf), so it "
                "cannot be replaced afterwards; leave eps=None"
            )
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    params = _operator_parameters(op)
    names = _parameter_names(op, len(params))
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in zip(names, params, strict=True) if id(p) not in groups]
    if missing:
        raise PreconditionerError(
            f"the optimizer does not hold {len(missing)} of the operator's parameters "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); give them to "
            "the optimizer, or take the Hessian over the parameters it trains "
            "(HessianOperator(..., params=[...]))"
        )
    pieces, used_eps, amsgrad = [], [], []
    for name, p in zip(names, params, strict=True):
        group, state = groups[id(p)], optimizer.state.get(p, {})
        second = _second_moment(kind, name, group, state, adamax)
        step = float(state["step"])
        if adamax:  # Adamax's step divides by exp_inf = max(beta2 u, |g| + eps)
            value = second.detach().to(torch.float64)
            used_eps.append(float(group["eps"]))
        else:
            beta2 = float(group["betas"][1])
            correction = 1.0 - beta2**step if bias_correction else 1.0
            if step < 1 or correction <= 0:
                raise PreconditionerError(
                    f"{kind}'s state for {name} is at step {step:g}, where the bias "
                    "correction 1 - beta2**step vanishes; call optimizer.step() first"
                )
            chosen = float(group["eps"]) if eps is None else float(eps)
            used_eps.append(chosen)
            amsgrad.append(bool(group.get("amsgrad", False)))
            value = second.detach().to(torch.float64).sqrt() / math.sqrt(correction) + chosen
        pieces.append(value.reshape(-1))
    device = params[0].device
    diagonal = torch.cat([piece.to(device) for piece in pieces])
    distinct = list(dict.fromkeys(used_eps))  # in the order of the operator's parameters
    attrs: dict[str, Any] = {
        "preconditioner": "adamax" if adamax else "adam",
        "preconditioner_optimizer": kind,
        "preconditioner_eps": distinct[0] if len(distinct) == 1 else distinct,
        "preconditioner_bias_correction": int(bias_correction and not adamax),
    }
    if any(amsgrad):
        attrs["preconditioner_amsgrad"] = 1
    return diagonal, attrs


def _second_moment(
    kind: str, name: str, group: Mapping[str, Any], state: Mapping[str, Any], adamax: bool
) -> torch.Tensor:
    """The state tensor Adam (``exp_avg_sq`` / ``max_exp_avg_sq``) or Adamax divides by."""
    key = "exp_inf" if adamax else "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
    if key in state and "step" in state:
        return state[key]
    if not adamax and "betas" not in group:
        held = ", ".join(sorted(state)) or "nothing yet"
        raise PreconditionerError(
            f"{kind} keeps no second-moment estimates (no exp_avg_sq; its state holds "
            f"{held}), so it has no diagonal preconditioner: the curvature it sees is the "
            "Hessian itself. Use the operator unwrapped, or an Adam-type optimizer (Adam, "
            "AdamW, NAdam, Adamax), or pass your own diagonal to PreconditionedOperator"
        )
    if not state:
        raise PreconditionerError(
            f"{kind} holds no second moments for {name} yet: its state is created by the "
            "first optimizer.step() that sees a gradient for it. Step the optimizer at least "
            "once (and make sure the parameter gets a gradient), or leave it out with "
            "HessianOperator(..., params=[...])"
        )
    raise PreconditionerError(
        f"{kind}'s state for {name} has no {key!r} (it holds {', '.join(sorted(state))}); "
        "adam_preconditioner reads Adam's second moment (exp_avg_sq, max_exp_avg_sq with "
        "amsgrad) or Adamax's exp_inf"
    )


def adam_preconditioner(
    optimizer: torch.optim.Optimizer,
    op: Any,
    *,
    eps: float | None = None,
    bias_correction: bool = True,
) -> torch.Tensor:
    """The diagonal ``P`` an Adam-type optimizer divides its update by, flat over ``op``.

    ``torch.optim.Adam`` / ``AdamW`` / ``NAdam`` update a parameter as
    ``theta -= lr * m_hat / (sqrt(v_hat) + eps)`` (AdamW's decoupled weight decay and
    NAdam's Nesterov numerator aside), with ``v_hat = v / (1 - beta2**t)``. So

    ``P = sqrt(exp_avg_sq / (1 - beta2**step)) + eps``

    per coordinate, read from the optimizer's state after its last ``step()``: exactly the
    denominator of that step, and the one the next step uses up to one more moving-average
    update of ``v``. ``beta2`` and ``eps`` are each parameter group's. With ``amsgrad=True``
    the running maximum ``max_exp_avg_sq`` replaces ``exp_avg_sq`` (as the optimizer does).
    ``torch.optim.Adamax`` updates ``theta -= lr / (1 - beta1**t) * m / u`` with
    ``u = exp_inf = max(beta2 u, |g| + eps)``, so for it ``P = exp_inf`` (``eps`` is inside
    the maximum; there is no second-moment bias correction). Computed in float64 from the
    stored state.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        ``Adam``, ``AdamW``, ``NAdam`` or ``Adamax`` (or another optimizer keeping Adam's
        state: ``exp_avg_sq``, ``step`` and groups with ``betas`` and ``eps``), after at
        least one ``step()``.
    op : HessianOperator or sequence of tensors
        The operator (``P`` follows its coordinate order, ``op.names``, each parameter
        flattened), or its parameters in order. Parameters are matched to the optimizer by
        identity; a ``HessianOperator`` built with ``dtype=`` is matched through the
        user's model, whose parameters the optimizer holds.
    eps : float, optional
        Replace every group's ``eps`` (e.g. 0 for ``sqrt(v_hat)`` alone; then coordinates
        that never had a gradient give P = 0, which :class:`PreconditionedOperator` refuses).
        Not for Adamax.
    bias_correction : bool
        Divide ``exp_avg_sq`` by ``1 - beta2**step`` as the optimizers do (default); False
        gives ``sqrt(v) + eps``.

    Returns
    -------
    torch.Tensor, shape (n,)
        ``P``, float64, on the parameters' device.

    Raises
    ------
    PreconditionerError
        For an optimizer without second moments (SGD, RMSprop, Adagrad...), an Adam whose
        state for some parameter is not created yet (before its first ``step()``),
        parameters of ``op`` the optimizer does not hold, RAdam and SparseAdam (whose
        updates divide by something else), and ``eps`` given for Adamax.
    TypeError
        When ``op`` does not expose its parameters (pass them as a list).
    """
    return _adam_diagonal(optimizer, op, eps=eps, bias_correction=bias_correction)[0]
