"""The Hessian of a model's loss over a whole dataset, as a linear operator.

``HessianOperator`` never forms the matrix: :meth:`HessianOperator.matmat` is one pass over
every batch (:class:`~hessnb.hessian.datapass.DataPass`), summing per-batch
Hessian-vector products weighted by batch size (so an uneven last batch is exact) in
float64. One operator serves a whole training run: its determinism check and graph cache
are keyed to the parameter state.

:class:`GGNOperator` (the generalised Gauss-Newton matrix) and
:class:`EmpiricalFisherOperator` are the same operator over another curvature
(:mod:`hessnb.hessian.curvature`): only the per-batch products differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from hessnb import distributed
from hessnb.hessian.curvature import resolve_products
from hessnb.hessian.datapass import BN_MODES, BN_TYPES, DataPass
from hessnb.hessian.graphcache import GraphCache, default_budget
from hessnb.hessian.params import ParameterSpace, ParamSpec, state_key

__all__ = ["DENSE_LIMIT", "OPERATORS", "EmpiricalFisherOperator", "GGNOperator", "HessianOperator"]

#: Largest parameter count for which :meth:`HessianOperator.dense` forms the matrix.
DENSE_LIMIT = 20_000

LossFn = Callable[[Any, Any], torch.Tensor]


class HessianOperator:
    """Hessian of the mean loss over a whole dataset, ``H = (1/N) sum_i d2 l_i / d theta2``.

    Parameters
    ----------
    model : torch.nn.Module
        The network. It is never modified: modes and buffers are restored after each call.
    loss_fn : callable
        ``loss_fn(outputs, targets)`` returning the **mean** loss of a batch (a scalar), e.g.
        ``torch.nn.functional.cross_entropy``.
    batches : iterable of (inputs, targets)
        Any re-iterable (a list, a DataLoader without shuffling). Every pass at the same
        parameters must yield the same batches in the same order; see
        ``check_determinism``. In BN train mode the batches' size is the batch size whose
        statistics batch norm uses.
    params : iterable of parameters or names, or a submodule, optional
        The parameters the Hessian is taken over (default: all with ``requires_grad``), for
        per-layer spectra.
    bn_mode : {"train", "eval"}
        ``"train"`` (default, the paper's setting): batch norm normalises with the
        statistics of each fixed batch, so the batches' size matters (use the training batch
        size, as the authors' code does); the running buffers are not touched. ``"eval"``:
        with its running (population) statistics. Dropout is always off. Models without
        batch norm give the same Hessian either way.
    dtype : torch.dtype, optional
        Compute HVPs in this dtype (e.g. ``torch.float64`` for exact comparisons) on a
        private copy of the model, re-synchronised whenever the model changes. Default: the
        model's own dtype. Sums are always float64.
    check_determinism : bool
        Compare per-batch losses between two fresh passes at the same parameters and raise
        :class:`~hessnb.errors.NonDeterministicError` when they differ. The constructor
        makes two passes for this check.
    transfer : bool
        Move each batch to the model's device (default: batches on another device are an
        error, so that nothing is copied silently).
    distributed : bool, optional
        Sum every pass over all ``torch.distributed`` ranks (all-reduce), so that each rank
        sees the full-dataset HVP while ``batches`` holds only its own shard (see
        :func:`hessnb.distributed.shard`). Default: when a process group of more than one
        rank is initialised.
    graph_cache : bool or int or "auto"
        Inside :meth:`reuse_graphs` (which :func:`hessnb.spectrum` and :meth:`dense` use),
        keep every batch's forward and first-backward graph, so each further HVP is one
        backward pass (about 1.5-2x faster for small CNNs). ``"auto"``: when ``batches``
        is an in-memory list or tuple, within a quarter of free memory (at most 4 GiB); an
        int is a budget in bytes; False turns it off. Used by the double-backward backend
        only.
    hvp : {"auto", "double-backward", "forward-over-reverse", "compile"}
        How each batch's Hessian-vector products are computed (:mod:`hessnb.hessian.hvp`):
        ``"double-backward"`` (a backward of the gradient per column, with the graph
        cache), ``"forward-over-reverse"`` (``torch.func.jvp`` of ``torch.func.grad``,
        vmapped over the block's columns), ``"compile"`` (the latter under
        ``torch.compile``; :class:`~hessnb.hessian.hvp.CompileUnavailableError` where it
        cannot run) or ``"auto"`` (default: the measured choice for the device,
        :data:`hessnb.hessian.hvp.AUTO_BACKEND`). All give the same products to rounding;
        the choice is recorded as ``provenance()["hvp"]``. :class:`GGNOperator` and
        :class:`EmpiricalFisherOperator` accept only ``"auto"``.
    """

    #: The matrix this operator multiplies by (:data:`hessnb.hessian.curvature.CURVATURES`).
    curvature: str = "hessian"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        *,
        params: ParamSpec = None,
        bn_mode: str = "train",
        dtype: torch.dtype | None = None,
        check_determinism: bool = True,
        transfer: bool = False,
        distributed: bool | None = None,
        graph_cache: bool | int | str = "auto",
        hvp: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if isinstance(batches, Iterator):
            raise TypeError(
                "batches is a one-shot iterator; pass something that can be iterated again "
                "(a list of (inputs, targets) or a DataLoader)"
            )
        self.space = ParameterSpace(model, params, dtype)
        backend = resolve_products(self.curvature, hvp, self.space.device)
        cache = _make_cache(graph_cache, batches, self.space.device)
        self.loss_fn, self.batches = loss_fn, batches
        self._pass = DataPass(
            self.space,
            loss_fn,
            batches,
            bn_mode=bn_mode,
            check_determinism=check_determinism,
            transfer=transfer,
            reduce=_reducer(distributed),  # before the first pass, so n_examples is global
            cache=cache if backend == "double-backward" else None,
            hvp=backend,
            curvature=self.curvature,
        )
        self._reuse_depth = 0  # > 0 inside reuse_graphs()
        first = self._pass.run()  # validates batches, loss and devices
        if check_determinism:
            self._pass.run()
        self.n_examples = int(first.examples)

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> nn.Module:
        """The module the Hessian is computed on (a private copy when ``dtype`` differs)."""
        return self.space.model

    @property
    def names(self) -> list[str]:
        """Names of the selected parameters."""
        return self.space.names

    @property
    def n_params(self) -> int:
        """Number of selected parameters (the operator's dimension)."""
        return self.space.n_params

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_params, n_params)``."""
        return (self.n_params, self.n_params)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype HVPs are computed in."""
        return self.space.dtype

    @property
    def device(self) -> torch.device:
        """Where the model and the vectors live."""
        return self.space.device

    @property
    def hvp(self) -> str:
        """The product backend in use (``"auto"`` resolved), e.g. ``"double-backward"``.

        ``"jvp-vjp"`` for the GGN and the empirical Fisher.
        """
        return self._pass.hvp

    @property
    def bn_mode(self) -> str:
        """Batch-norm semantics of the Hessian, ``"train"`` or ``"eval"``."""
        return self._pass.bn_mode

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of this process's batches in the last fresh pass (BN statistics in train mode)."""
        return list(self._pass.batch_sizes)

    @property
    def has_batchnorm(self) -> bool:
        """Whether the model contains batch-norm layers."""
        return any(isinstance(m, BN_TYPES) for m in self.model.modules())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, n_params={self.n_params}, "
            f"n_examples={getattr(self, 'n_examples', '?')}, bn_mode={self.bn_mode!r}, "
            f"dtype={self.dtype}, hvp={self.hvp!r})"
        )

    def provenance(self) -> dict[str, Any]:
        """Attributes describing the operator for datasets (see ``hessnb.schema``)."""
        sizes = self.batch_sizes
        return {
            "model": type(self.model).__name__,
            "bn_mode": self.bn_mode,
            "has_batchnorm": int(self.has_batchnorm),
            "n_examples": self.n_examples,
            "dtype": str(self.dtype).replace("torch.", ""),
            "curvature": self.curvature,
            "hvp": self.hvp,
            "hessian_batch_size": sizes[0] if len(set(sizes)) == 1 else sizes,
        }

    def data_passes(self) -> int:
        """Fresh passes over the data so far (cached-graph passes not counted)."""
        return self._pass.fresh_passes

    def graph_cache_info(self) -> dict[str, Any]:
        """State of the graph cache: ``enabled``, ``active``, ``batches``, ``bytes``, ``gave_up``.

        ``active`` says whether complete graphs for the current parameters are held.
        """
        cache = self._pass.cache
        if cache is None:
            return {"enabled": False, "active": False, "batches": 0, "bytes": 0, "gave_up": False}
        return {
            "enabled": True,
            "active": cache.valid(state_key(self.space.state)),
            "batches": len(cache.entries),
            "bytes": cache.saved_bytes,
            "gave_up": cache.gave_up,
        }

    # ------------------------------------------------------------------ numerics
    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of shape ``(n_params,)``; float64 result.

        ``H`` is the operator's matrix (:attr:`curvature`): the Hessian, or the GGN or
        empirical Fisher in the subclasses; likewise in :meth:`matmat` and :meth:`dense`.
        """
        return self._pass.run(vectors=self._as_block(v, ndim=1)).products[:, 0]

    def matmat(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``(n_params, k)``, in one pass over the data.

        The forward pass and first backward of each batch are shared by all ``k`` vectors.
        """
        return self._pass.run(vectors=self._as_block(vectors, ndim=2)).products

    def block_matmat(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``P_S H P_S V``: each column times the diagonal block of the parameters it touches.

        ``S`` is, per column, the set of parameters where the column is non-zero. For a
        column supported on one layer's parameters this is that layer's diagonal block of
        the Hessian (what :func:`hessnb.spectrum` with ``blocks=`` needs), and the double
        backward differentiates only those parameters. One pass over the data for all
        columns, shape ``(n_params, k)`` float64.
        """
        return self._pass.run(vectors=self._as_block(vectors, ndim=2), diagonal=True).products

    def __matmul__(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.matmat(vectors) if np.ndim(vectors) == 2 else self.matvec(vectors)

    def gradient(self) -> torch.Tensor:
        """Full-dataset gradient of the mean loss, flat float64 ``(n_params,)``."""
        return self._pass.run(need_gradient=True).gradient

    def evaluate(self, gradient: bool = False) -> dict[str, Any]:
        """Mean loss, (for classification) accuracy and optionally the gradient, one pass.

        Returns ``{"loss": float, "accuracy": float, "gradient": (n_params,) float64}``;
        ``accuracy`` only for classification, ``gradient`` only when asked for.
        """
        result = self._pass.run(need_gradient=gradient)
        out: dict[str, Any] = {"loss": result.loss}
        if result.classification:
            out["accuracy"] = result.correct
        if gradient:
            out["gradient"] = result.gradient
        return out

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The exact matrix ``(n_params, n_params)`` in float64, by columns.

        Costs ``n_params / chunk`` passes over the data; refused above 20,000 parameters.
        """
        if self.n_params > DENSE_LIMIT:
            raise ValueError(
                f"dense() forms an {self.n_params} x {self.n_params} matrix; it is meant for "
                f"models with at most {DENSE_LIMIT} parameters. Use hessnb.spectrum(op) "
                "instead, or select fewer parameters with params=..."
            )
        eye = torch.eye(self.n_params, dtype=torch.float64, device=self.device)
        with self.reuse_graphs():
            cols = [self.matmat(eye[:, i : i + chunk]) for i in range(0, self.n_params, chunk)]
        full = torch.cat(cols, dim=1)
        return 0.5 * (full + full.T)

    @contextlib.contextmanager
    def reuse_graphs(self) -> Iterator[HessianOperator]:
        """Within this block, reuse each batch's forward and first-backward graph.

        Graphs are kept for the current parameter state and rebuilt when the state changes
        (an optimizer step inside the block costs one fresh pass, never a wrong product).
        They are released on leaving the outermost block. Without a cache
        (``graph_cache=False``, or data not held in memory with ``"auto"``) this changes
        nothing.
        """
        self._reuse_depth += 1
        self._pass.caching = True
        try:
            yield self
        finally:
            self._reuse_depth -= 1
            if self._reuse_depth == 0:
                self._pass.caching = False
                if self._pass.cache is not None:
                    self._pass.cache.drop()

    def flatten(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat float64 vector."""
        return self.space.flatten(tensors)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped like the selected parameters."""
        return self.space.unflatten(flat)

    def parameters_vector(self) -> torch.Tensor:
        """Current values of the selected parameters, flat float64."""
        return self.space.vector()

    def _as_block(self, v: torch.Tensor | np.ndarray, ndim: int) -> torch.Tensor:
        t = torch.as_tensor(v)
        if t.ndim != ndim or t.shape[0] != self.n_params:
            want = f"({self.n_params},)" if ndim == 1 else f"({self.n_params}, k)"
            raise ValueError(
                f"expected a vector of shape {want} for this operator, got {tuple(t.shape)}"
            )
        return t.to(device=self.device, dtype=self.dtype).reshape(self.n_params, -1)


class GGNOperator(HessianOperator):
    """Generalised Gauss-Newton matrix of the mean loss over a whole dataset.

    ``G = (1/N) sum_b B_b J_b^T H_b J_b``, over batches ``b`` of ``B_b`` examples, with
    ``J_b`` the Jacobian of the batch's outputs (all of them, ``(B_b * outputs, n_params)``)
    in the selected parameters and ``H_b`` the Hessian of the batch-mean loss in those
    outputs. Without batch norm in train mode this is ``(1/N) sum_i J_i^T H_i J_i`` per
    example. It is the Hessian without the network's second-order terms, and positive
    semi-definite for losses convex in the outputs (cross-entropy, MSE); for a network
    linear in its parameters it equals the Hessian.

    Products use only ``jvp`` and ``vjp`` of the network
    (:func:`hessnb.hessian.curvature.ggn_products`): ``hvp`` reports ``"jvp-vjp"``, there
    is no graph cache, and :meth:`reuse_graphs` changes nothing.

    Parameters
    ----------
    model, loss_fn, batches, params, bn_mode, dtype, check_determinism, transfer, distributed
        As for :class:`HessianOperator` (the same batch-size weighting, batch-norm semantics
        and determinism check). ``loss_fn`` must have curvature in the outputs: a loss whose
        Hessian in the outputs is zero (e.g. ``l1_loss``) is refused with a ValueError
        during construction, as is a model whose output is not one tensor.
    graph_cache : bool or int or "auto"
        Accepted for a uniform signature and validated; unused.
    hvp : {"auto"}
        Any other value is refused with a ValueError (Hessian backends do not apply).
    """

    curvature = "ggn"


class EmpiricalFisherOperator(HessianOperator):
    """Empirical Fisher of the mean loss over a whole dataset.

    ``F = (1/N) sum_i g_i g_i^T`` with ``g_i`` the gradient, in the selected parameters,
    of example ``i``'s loss ``loss_fn(outputs[i:i+1], targets[i:i+1])``, its outputs taken
    from the forward of its whole batch (so with batch norm in train mode ``g_i`` depends on
    the batch, as the Hessian's semantics do). Positive semi-definite, of rank at most
    ``N``.

    Products use only ``jvp`` and ``vjp`` of the per-example losses
    (:func:`hessnb.hessian.curvature.fisher_products`): ``hvp`` reports ``"jvp-vjp"``,
    there is no graph cache, and :meth:`reuse_graphs` changes nothing.

    Parameters
    ----------
    model, loss_fn, batches, params, bn_mode, dtype, check_determinism, transfer, distributed
        As for :class:`HessianOperator`. ``loss_fn(outputs, targets)`` must be the mean of
        per-example losses (e.g. ``cross_entropy`` with ``reduction="mean"``); a sum, class
        weights or terms coupling examples are refused with a ValueError during
        construction (checked on the first batch), as is a model whose output is not one
        tensor or targets that are not one tensor of examples.
    graph_cache : bool or int or "auto"
        Accepted for a uniform signature and validated; unused.
    hvp : {"auto"}
        Any other value is refused with a ValueError (Hessian backends do not apply).
    """

    curvature = "fisher"


#: The operator class of each curvature (:data:`hessnb.hessian.curvature.CURVATURES`).
OPERATORS: dict[str, type[HessianOperator]] = {
    "hessian": HessianOperator,
    "ggn": GGNOperator,
    "fisher": EmpiricalFisherOperator,
}


def _reducer(flag: bool | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    return distributed.all_reduce_sum if distributed.use_distributed(flag) else None


def _make_cache(setting: bool | int | str, batches: Any, device: torch.device) -> GraphCache | None:
    if setting is False or setting is None:
        return None
    if setting == "auto":
        in_memory = isinstance(batches, (list, tuple))
        return GraphCache(default_budget(device)) if in_memory else None
    if setting is True:
        return GraphCache(2**62)
    if isinstance(setting, int) and setting > 0:
        return GraphCache(setting)
    raise ValueError(
        f"graph_cache must be True, False, 'auto' or a positive byte budget, got {setting!r}"
    )
