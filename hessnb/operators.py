"""The Hessian of a model's loss over a whole dataset, as a linear operator.

``HessianOperator`` never forms the matrix: :meth:`HessianOperator.matmat` is a pass over
every batch, summing per-batch Hessian-vector products weighted by batch size (so an
uneven last batch is exact) in float64. It is the only module that touches ``torch.nn``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hessnb import distributed as _distributed
from hessnb.errors import NonDeterministicError, NonFiniteError
from hessnb.graphcache import BatchGraph, GraphCache, default_budget

__all__ = ["BN_MODES", "HessianOperator"]

BN_MODES = ("eval", "train")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_DROPOUT_TYPES = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)
#: Largest parameter count for which :meth:`HessianOperator.dense` forms the matrix.
DENSE_LIMIT = 20_000

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class _PassResult:
    """Sums over one pass of the data, already weighted by batch size."""

    examples: int
    loss: float
    correct: float | None
    gradient: torch.Tensor | None  # (n,) float64, mean over examples
    products: torch.Tensor | None  # (n, k) float64, mean over examples


def _select_parameters(
    model: nn.Module, params: Iterable[nn.Parameter | str] | nn.Module | None
) -> list[tuple[str, nn.Parameter]]:
    named = list(model.named_parameters())
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no parameters; hessnb needs a model with trainable "
            "parameters"
        )
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError(
                "every parameter of the model has requires_grad=False; unfreeze some or pass "
                "params=[...] to choose which parameters the Hessian is taken over"
            )
        return chosen
    by_id = {id(p): n for n, p in named}
    by_name = dict(named)
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    elif isinstance(params, (str, torch.Tensor)):
        params = [params]  # one name or one parameter, not an iterable of characters / rows
    chosen, seen = [], set()
    for item in params:
        if isinstance(item, str):
            if item not in by_name:
                close = [n for n in by_name if item in n][:5]
                raise ValueError(
                    f"no parameter named {item!r} in the model; names look like "
                    f"{close or list(by_name)[:5]}"
                )
            name, param = item, by_name[item]
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(
                    f"a selected parameter of shape {tuple(item.shape)} is not part of the "
                    "model; pass parameters from model.parameters() (or their names)"
                )
            name, param = by_id[id(item)], item
        else:
            raise TypeError(
                f"params must hold nn.Parameter objects or names, got {type(item).__name__}"
            )
        if id(param) not in seen:
            seen.add(id(param))
            chosen.append((name, param))
    if not chosen:
        raise ValueError("params selects no parameters; pass at least one")
    return chosen


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _move(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        cast = dtype if (dtype is not None and obj.is_floating_point()) else None
        return obj.to(device=device, dtype=cast, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device, dtype) for v in obj)
    return obj


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
        Any re-iterable (a list, a DataLoader without shuffling). Every pass must yield the
        same batches in the same order; see ``check_determinism``.
    params : iterable of parameters or names, or a submodule, optional
        The parameters the Hessian is taken over (default: all with ``requires_grad``), for
        per-layer spectra.
    bn_mode : {"eval", "train"}
        ``"eval"``: batch norm uses its running statistics. ``"train"``: batch statistics of
        each fixed batch, without touching the running buffers. Dropout is always off.
    dtype : torch.dtype, optional
        Compute HVPs in this dtype (e.g. ``torch.float64`` for exact comparisons) on a
        private copy of the model. Default: the model's own dtype. Sums are always float64.
    check_determinism : bool
        Compare per-batch losses between passes and raise
        :class:`~hessnb.errors.NonDeterministicError` when they differ.
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
        int is a budget in bytes; False turns it off.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        *,
        params: Iterable[nn.Parameter | str] | nn.Module | None = None,
        bn_mode: str = "eval",
        dtype: torch.dtype | None = None,
        check_determinism: bool = True,
        transfer: bool = False,
        distributed: bool | None = None,
        graph_cache: bool | int | str = "auto",
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
        selected = _select_parameters(model, params)
        if dtype is not None and dtype != selected[0][1].dtype:
            names = {n for n, _ in selected}
            model = copy.deepcopy(model).to(dtype)
            selected = [(n, p) for n, p in model.named_parameters() if n in names]
        self.model = model
        self.loss_fn = loss_fn
        self.batches = batches
        self.bn_mode = bn_mode
        self.check_determinism = check_determinism
        self.transfer = transfer
        self.names = [n for n, _ in selected]
        self._params = [p for _, p in selected]
        self.dtype = self._params[0].dtype
        self.device = self._params[0].device
        self.n_params = sum(p.numel() for p in self._params)
        self._reference: list[tuple[int, float]] | None = None
        self._cache = _make_cache(graph_cache, batches, self.device)
        self._reuse_depth = 0  # > 0 inside reuse_graphs(): the parameters are frozen
        self._reduce: Callable[[torch.Tensor], torch.Tensor] | None = _distributed.reducer(
            distributed
        )  # before the first pass, so n_examples is global
        first = self._pass()  # validates batches, loss and devices; records reference
        if check_determinism:
            self._pass()
        self.n_examples = first.examples

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """``(n_params, n_params)``."""
        return (self.n_params, self.n_params)

    @property
    def has_batchnorm(self) -> bool:
        """Whether the model contains batch-norm layers."""
        return any(isinstance(m, _BN_TYPES) for m in self.model.modules())

    def __repr__(self) -> str:
        return (
            f"HessianOperator({type(self.model).__name__}, n_params={self.n_params}, "
            f"n_examples={getattr(self, 'n_examples', '?')}, bn_mode={self.bn_mode!r}, "
            f"dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ public numerics
    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of shape ``(n_params,)``; float64 result."""
        v = self._as_block(v, ndim=1)
        return self._pass(vectors=v).products[:, 0]

    def matmat(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``(n_params, k)``, in one pass over the data.

        The forward pass and first backward of each batch are shared by all ``k`` vectors.
        """
        return self._pass(vectors=self._as_block(vectors, ndim=2)).products

    def gradient(self) -> torch.Tensor:
        """Full-dataset gradient of the mean loss, flat float64 ``(n_params,)``."""
        return self._pass(need_gradient=True).gradient

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """Full-dataset mean loss and gradient in one pass."""
        result = self._pass(need_gradient=True)
        return result.loss, result.gradient

    def evaluate(self, gradient: bool = False) -> dict[str, Any]:
        """Mean loss, (for classification) accuracy and optionally the gradient, one pass.

        Returns ``{"loss": float, "accuracy": float, "gradient": (n_params,) float64}``;
        ``accuracy`` only for classification, ``gradient`` only when asked for.
        """
        result = self._pass(need_gradient=gradient)
        out: dict[str, Any] = {"loss": result.loss}
        if result.correct is not None:
            out["accuracy"] = result.correct
        if gradient:
            out["gradient"] = result.gradient
        return out

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The exact Hessian ``(n_params, n_params)`` in float64, by columns.

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

        A promise that the parameters and buffers do not change inside the block (as in one
        Lanczos run): each further HVP is then one backward pass. The graphs are released
        on leaving the outermost block. Without a cache (``graph_cache=False``, or data not
        held in memory with ``"auto"``) this changes nothing.
        """
        self._reuse_depth += 1
        try:
            yield self
        finally:
            self._reuse_depth -= 1
            if self._reuse_depth == 0 and self._cache is not None:
                self._cache.drop()

    @property
    def _caching(self) -> bool:
        return self._reuse_depth > 0 and self._cache is not None

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat float64 vector."""
        return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped like the selected parameters."""
        out, offset = [], 0
        for p in self._params:
            out.append(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def parameters_vector(self) -> torch.Tensor:
        """Current values of the selected parameters, flat float64."""
        return self.flatten([p.detach() for p in self._params])

    # ------------------------------------------------------------------ internals
    def _as_block(self, v: torch.Tensor | np.ndarray, ndim: int) -> torch.Tensor:
        t = torch.as_tensor(v)
        if t.ndim != ndim or t.shape[0] != self.n_params:
            want = f"({self.n_params},)" if ndim == 1 else f"({self.n_params}, k)"
            raise ValueError(
                f"expected a vector of shape {want} for this operator, got {tuple(t.shape)}"
            )
        t = t.to(device=self.device, dtype=self.dtype)
        return t.reshape(self.n_params, -1)

    @contextlib.contextmanager
    def _modes(self) -> Iterator[None]:
        """Set evaluation semantics; restore modes, flags and requires_grad afterwards."""
        modules = list(self.model.modules())
        training = [m.training for m in modules]
        tracking = [getattr(m, "track_running_stats", None) for m in modules]
        all_params = list(self.model.parameters())
        requires = [p.requires_grad for p in all_params]
        selected = {id(p) for p in self._params}
        try:
            self.model.eval()
            if self.bn_mode == "train":
                for m in modules:
                    if isinstance(m, _BN_TYPES):
                        m.train()
                        m.track_running_stats = False  # batch statistics, buffers untouched
            for p in all_params:
                p.requires_grad_(id(p) in selected)
            yield
        finally:
            for m, flag, track in zip(modules, training, tracking, strict=True):
                m.training = flag
                if track is not None:
                    m.track_running_stats = track
            for p, flag in zip(all_params, requires, strict=True):
                p.requires_grad_(flag)

    def _prepare(self, batch: Any, index: int) -> tuple[Any, Any]:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"batch {index} is a {type(batch).__name__}; each batch must be a pair "
                "(inputs, targets)"
            )
        inputs, targets = batch
        if self.transfer:
            inputs = _move(inputs, self.device, None)
            targets = _move(targets, self.device, None)
        tensor = _first_tensor(inputs)
        if tensor is not None and tensor.device != self.device:
            raise ValueError(
                f"batch {index} has inputs on {tensor.device} but the model is on "
                f"{self.device}; move the data to {self.device} or pass transfer=True"
            )
        inputs = _move(inputs, self.device, self.dtype)  # cast floating inputs to the dtype
        return inputs, targets

    def _loss(self, inputs: Any, targets: Any, index: int) -> tuple[torch.Tensor, Any]:
        outputs = self.model(inputs)
        loss = self.loss_fn(outputs, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
            raise ValueError(
                f"loss_fn returned {shape} on batch {index}; it must return the mean loss of "
                "the batch as a scalar (e.g. reduction='mean')"
            )
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"loss is {loss.item()} on batch {index}; check the data, the model's "
                "parameters and the loss function"
            )
        return loss.reshape(()), outputs

    def _check_reference(self, losses: list[tuple[int, float]]) -> None:
        if self._reference is None:
            self._reference = losses
            return
        if not self.check_determinism:
            return
        rtol = 1e-10 if self.dtype == torch.float64 else 1e-5

        def differ(a: tuple[int, float], b: tuple[int, float]) -> bool:
            return a[0] != b[0] or not math.isclose(a[1], b[1], rel_tol=rtol, abs_tol=rtol)

        pairs = list(zip(losses, self._reference, strict=False))
        if len(losses) != len(self._reference) or any(differ(a, b) for a, b in pairs):
            first_diff = next((i for i, (a, b) in enumerate(pairs) if differ(a, b)), len(pairs))
            raise NonDeterministicError(
                "two passes over the batches gave different per-batch losses (first at "
                f"batch {first_diff}); the Hessian of a fixed dataset needs identical passes. "
                "Likely causes: a shuffling DataLoader (use shuffle=False), random data "
                "augmentation (use evaluation transforms), or randomness in the model's "
                "forward pass. Pass check_determinism=False only if the differences are "
                "tiny floating-point noise you accept."
            )

    def _graphs(self, build: bool, create_graph: bool) -> Iterator[BatchGraph]:
        """Yield each batch's loss (and gradients) from a fresh pass over the data.

        With ``create_graph`` and a cache that accepts them, the graphs are kept for reuse.
        """
        keep = create_graph and self._caching and self._cache.start(self._state)
        examples, losses = 0, []
        for index, batch in enumerate(self.batches):
            inputs, targets = self._prepare(batch, index)
            counting = self._cache.counting() if keep else contextlib.nullcontext()
            with torch.set_grad_enabled(build), counting:
                loss, outputs = self._loss(inputs, targets, index)
                entry = BatchGraph(
                    _batch_size(inputs, targets), float(loss.detach()), _correct(outputs, targets)
                )
                if build:
                    entry.grads, entry.live = self._first_backward(loss, index, create_graph)
            examples += entry.size
            losses.append((entry.size, entry.loss))
            keep = keep and self._cache.keep(entry)
            yield entry
        if examples == 0:
            raise ValueError("batches is empty; pass at least one (inputs, targets) batch")
        self._check_reference(losses)

    def _first_backward(
        self, loss: torch.Tensor, index: int, create_graph: bool
    ) -> tuple[tuple[torch.Tensor, ...], list[int]]:
        if not loss.requires_grad:
            raise ValueError(
                f"the loss of batch {index} does not depend on the selected parameters "
                f"{self.names[:5]}; select parameters the model's output uses"
            )
        # Parameters the loss does not use (e.g. an unused head) get zero gradient
        # and zero Hessian rows instead of an autograd error.
        grads = torch.autograd.grad(
            loss,
            self._params,
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return grads, [j for j, g in enumerate(grads) if g.requires_grad]

    @property
    def _state(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def _pass(
        self, vectors: torch.Tensor | None = None, need_gradient: bool = False
    ) -> _PassResult:
        """One pass over the data (or over cached graphs); sums weighted by batch size."""
        n, k = self.n_params, (0 if vectors is None else vectors.shape[1])
        grad_sum = (
            torch.zeros(n, dtype=torch.float64, device=self.device) if need_gradient else None
        )
        prod_sum = torch.zeros(n, k, dtype=torch.float64, device=self.device) if k else None
        tangents = [self.unflatten(vectors[:, i]) for i in range(k)] if k else []
        loss_sum, correct, examples, classification = 0.0, 0.0, 0, True
        cached = self._caching and self._cache.valid(self._state)
        failure: BaseException | None = None
        try:
            with self._modes():
                entries = (
                    self._cache.entries
                    if cached
                    else self._graphs(build=need_gradient or k > 0, create_graph=k > 0)
                )
                for entry in entries:
                    examples += entry.size
                    loss_sum += entry.size * entry.loss
                    classification = classification and entry.correct is not None
                    correct += entry.correct or 0.0
                    if grad_sum is not None:
                        grad_sum += entry.size * self.flatten([g.detach() for g in entry.grads])
                    for i, tangent in enumerate(tangents):
                        if not entry.live:  # gradient constant in the parameters: H = 0
                            continue
                        hv = torch.autograd.grad(
                            [entry.grads[j] for j in entry.live],
                            self._params,
                            grad_outputs=[tangent[j] for j in entry.live],
                            retain_graph=i < k - 1 or entry.kept,
                            allow_unused=True,
                            materialize_grads=True,
                        )
                        prod_sum[:, i] += entry.size * self.flatten(hv)
        except Exception as exc:  # distributed: tell the other ranks instead of hanging
            if self._reduce is None:
                raise
            failure = exc
        totals = self._all_reduce(
            examples, loss_sum, correct, grad_sum, prod_sum, failed=failure is not None
        )
        if failure is not None:
            raise failure
        examples, loss_sum, correct, grad_sum, prod_sum = totals
        return _PassResult(
            examples=examples,
            loss=loss_sum / examples,
            correct=correct / examples if classification else None,
            gradient=None if grad_sum is None else grad_sum / examples,
            products=None if prod_sum is None else prod_sum / examples,
        )

    def _all_reduce(self, examples, loss_sum, correct, grad_sum, prod_sum, failed=False):
        """Sum the pass's totals across processes (identity unless distributed).

        Every rank joins the reduction even after a local error (``failed``), so that all
        ranks raise instead of waiting for one that will never arrive.
        """
        if self._reduce is None:
            return examples, loss_sum, correct, grad_sum, prod_sum
        scalars = torch.tensor([examples, loss_sum, correct, float(failed)], dtype=torch.float64)
        parts = [scalars.to(self.device)]
        parts += [t.reshape(-1) for t in (grad_sum, prod_sum) if t is not None]
        flat = self._reduce(torch.cat(parts))
        examples, loss_sum, correct, failures = flat[:4].tolist()
        if failures and not failed:
            raise RuntimeError(
                f"{int(failures)} other process(es) failed during this pass over the data; "
                "see their error messages (this rank stopped too instead of waiting)"
            )
        offset, out = 4, []
        for t in (grad_sum, prod_sum):
            if t is None:
                out.append(None)
                continue
            out.append(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        return round(examples), loss_sum, correct, out[0], out[1]


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


def _batch_size(inputs: Any, targets: Any) -> int:
    for obj in (targets, inputs):
        tensor = _first_tensor(obj)
        if tensor is not None and tensor.ndim > 0:
            return int(tensor.shape[0])
    raise TypeError("cannot tell the batch size: neither inputs nor targets hold a tensor")


def _correct(outputs: Any, targets: Any) -> float | None:
    """Number of correct predictions when this looks like classification, else None."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return None
    if outputs.shape[0] != targets.shape[0]:
        return None
    return float((outputs.detach().argmax(dim=1) == targets).sum())
