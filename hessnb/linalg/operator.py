"""The operator protocol: anything with ``shape`` and ``matmat`` (or ``@``) is an operator.

Lanczos needs only a dimension and a block product ``A @ V`` on float64 ``(n, k)`` torch
tensors. :func:`as_operator` adapts what users hold: a hessnb ``HessianOperator``, a scipy
``LinearOperator`` (numpy in, numpy out), a curvlinops operator (torch in, torch out), or a
dense symmetric array or tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["MatrixOperator", "Operator", "SymmetricOperator", "as_operator"]


@runtime_checkable
class SymmetricOperator(Protocol):
    """What hessnb accepts as an operator: a square ``shape`` and a block product.

    ``matmat(V)`` (or ``V`` given to ``@``) maps an ``(n, k)`` block to ``A @ V``; the
    operator must be symmetric.
    """

    @property
    def shape(self) -> tuple[int, int]: ...


class MatrixOperator:
    """An explicit symmetric matrix as an operator (tests, teaching, small examples).

    Parameters
    ----------
    matrix : array or tensor, shape (n, n)
        Symmetric; converted to float64.
    """

    def __init__(self, matrix: torch.Tensor | np.ndarray) -> None:
        m = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
        m = m.detach().to(torch.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(m.shape)}")
        if not torch.allclose(m, m.T, rtol=1e-10, atol=1e-12 * float(m.abs().max() + 1)):
            raise ValueError("the matrix is not symmetric; a Hessian must be (use (A + A.T) / 2)")
        self.matrix = m
        self.device = m.device

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.matrix.shape[0], self.matrix.shape[1])

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A @ V`` for ``V`` of shape ``(n, k)``."""
        return self.matrix @ vectors.to(self.matrix.device, torch.float64)

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.matmat(vectors)


class Operator:
    """An operator as Lanczos sees it: ``dim``, ``device`` and a float64 ``matmat``.

    Built by :func:`as_operator`; ``source`` is the object the user passed (its
    ``provenance()`` and ``reuse_graphs()`` are used when it has them).
    """

    def __init__(
        self,
        source: Any,
        dim: int,
        product: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> None:
        self.source, self.dim, self.device = source, dim, device
        self._product = product

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``A @ V`` for a float64 ``(dim, k)`` tensor, as float64 on ``device``."""
        out = self._product(vectors)
        out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
        out = out.reshape(self.dim, -1) if out.ndim == 1 else out
        if tuple(out.shape) != tuple(vectors.shape):
            raise ValueError(
                f"{type(self.source).__name__} returned shape {tuple(out.shape)} for a block "
                f"of shape {tuple(vectors.shape)}; an operator must return A @ V"
            )
        return out.to(device=self.device, dtype=torch.float64)

    def reuse(self) -> contextlib.AbstractContextManager[Any]:
        """The source's ``reuse_graphs()`` (a promise that it does not change), if any."""
        reuse = getattr(self.source, "reuse_graphs", None)
        return reuse() if callable(reuse) else contextlib.nullcontext()

    def provenance(self) -> dict[str, Any]:
        """The source's ``provenance()``, else its type name as ``model``."""
        describe = getattr(self.source, "provenance", None)
        return dict(describe()) if callable(describe) else {"model": type(self.source).__name__}


def _square_dim(op: Any) -> int:
    shape = getattr(op, "shape", None)
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(
            f"{type(op).__name__} has no (n, n) shape; an operator needs shape and matmat(V) "
            "or V -> op @ V"
        ) from None
    if rows != cols or rows < 1:
        raise ValueError(f"an operator must be square and non-empty, got shape {(rows, cols)}")
    return rows


def _is_scipy(op: Any) -> bool:
    module = type(op).__module__
    return module.startswith("scipy.")


def _torch_target(op: Any) -> tuple[torch.device, torch.dtype]:
    device = getattr(op, "device", None)
    dtype = getattr(op, "dtype", None)
    device = torch.device(device) if isinstance(device, (str, torch.device)) else None
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float64
    return device or torch.device("cpu"), dtype


def as_operator(op: Any) -> Operator:
    """Adapt ``op`` to the :class:`Operator` Lanczos uses.

    Parameters
    ----------
    op : object
        A ``HessianOperator``; a dense symmetric ``(n, n)`` numpy array or torch tensor; a
        scipy ``LinearOperator`` or sparse matrix (numpy blocks); or any object with
        ``shape == (n, n)`` and ``matmat(V)`` or ``op @ V`` on torch ``(n, k)`` blocks
        (e.g. curvlinops operators; their ``device`` and ``dtype`` are respected).

    Raises
    ------
    TypeError
        If ``op`` has no square shape or no block product.
    """
    if isinstance(op, Operator):
        return op
    if isinstance(op, (np.ndarray, torch.Tensor)):
        op = MatrixOperator(op)
    dim = _square_dim(op)
    multiply = getattr(op, "matmat", None)
    if not callable(multiply):
        if not hasattr(type(op), "__matmul__"):
            raise TypeError(
                f"{type(op).__name__} has a shape but neither matmat(V) nor @; pass an "
                "operator with a block product"
            )
        multiply = op.__matmul__
    if _is_scipy(op):

        def product(vectors: torch.Tensor) -> Any:
            return multiply(vectors.detach().cpu().numpy())

        return Operator(op, dim, product, torch.device("cpu"))
    device, dtype = _torch_target(op)

    def torch_product(vectors: torch.Tensor) -> Any:
        return multiply(vectors.to(device=device, dtype=dtype))

    return Operator(op, dim, torch_product, device)
