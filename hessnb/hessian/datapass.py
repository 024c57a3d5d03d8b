"""One pass over the whole dataset: losses, gradients and Hessian-vector products.

A pass sets the evaluation semantics (batch norm in train or eval mode, dropout off),
checks each batch's loss, sums per-batch results weighted by batch size in float64,
sums them over ``torch.distributed`` ranks when asked, and compares per-batch losses with
the previous pass **at the same parameter state** (so that a shuffling data loader is
caught, while an optimizer step between passes is not mistaken for one).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessnb.errors import NonDeterministicError, NonFiniteError
from hessnb.hessian.batches import batch_size, correct_count, prepare
from hessnb.hessian.curvature import make_functional, product_backends
from hessnb.hessian.graphcache import BatchGraph, GraphCache
from hessnb.hessian.hvp import FunctionalHVP
from hessnb.hessian.params import ParameterSpace, state_key

__all__ = ["BN_MODES", "DataPass", "PassTotals"]

BN_MODES = ("eval", "train")
BN_TYPES = (nn.modules.batchnorm._BatchNorm,)

LossFn = Callable[[Any, Any], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PassTotals:
    """Sums over one pass of the data, weighted by batch size (means via :meth:`mean`).

    ``gradient`` is ``(n,)`` and ``products`` ``(n, k)``, float64, or None when not asked.
    """

    examples: float = 0.0
    loss: float = 0.0
    correct: float = 0.0
    classification: bool = True
    gradient: torch.Tensor | None = None
    products: torch.Tensor | None = None

    def add(self, entry: BatchGraph) -> None:
        """Add one batch's size, loss and correct count."""
        self.examples += entry.size
        self.loss += entry.size * entry.loss
        self.classification = self.classification and entry.correct is not None
        self.correct += entry.correct or 0.0

    def all_reduce(self, reduce: Reduce, failed: bool, device: torch.device) -> PassTotals:
        """Sum every field over ranks with ``reduce``; raise if another rank ``failed``.

        Every rank joins the reduction even after a local error, so that all ranks raise
        instead of waiting for one that will never arrive.
        """
        scalars = [self.examples, self.loss, self.correct, float(not self.classification)]
        tensors = [self.gradient, self.products]
        parts = [torch.tensor([*scalars, float(failed)], dtype=torch.float64, device=device)]
        parts += [t.reshape(-1) for t in tensors if t is not None]
        flat = reduce(torch.cat(parts))
        examples, loss, correct, not_classification, failures = flat[:5].tolist()
        if failures and not failed:
            raise RuntimeError(
                f"{int(failures)} other process(es) failed during this pass over the data; "
                "see their error messages (this rank stopped too instead of waiting)"
            )
        out = PassTotals(round(examples), loss, correct, not_classification == 0)
        offset = 5
        for name, t in zip(("gradient", "products"), tensors, strict=True):
            if t is not None:
                setattr(out, name, flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        return out

    def mean(self) -> PassTotals:
        """Per-example means (accuracy for ``correct``; None for regression)."""
        n = self.examples
        return PassTotals(
            n,
            self.loss / n,
            self.correct / n if self.classification else math.nan,
            self.classification,
            None if self.gradient is None else self.gradient / n,
            None if self.products is None else self.products / n,
        )


class DataPass:
    """Passes over fixed batches with the Hessian's semantics (see the module docstring).

    Parameters
    ----------
    space : ParameterSpace
        The parameters and the module they belong to.
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch.
    batches : re-iterable of (inputs, targets)
    bn_mode : {"eval", "train"}
        Batch norm with running statistics, or with each batch's statistics (running
        buffers untouched).
    check_determinism : bool
        Compare per-batch losses of two fresh passes at the same parameter state.
    transfer : bool
        Move batches to the model's device.
    reduce : callable, optional
        Sum of a flat tensor over ``torch.distributed`` ranks (None: one process).
    cache : GraphCache, optional
        Keeps each batch's forward and first-backward graph inside ``caching`` blocks
        (used by the double-backward backend only).
    hvp : {"double-backward", "forward-over-reverse", "compile", "jvp-vjp"}, optional
        How each batch's products are computed: a Hessian backend of
        :mod:`hessnb.hessian.hvp` (``"auto"`` is resolved by the caller), or ``"jvp-vjp"``
        for the other curvatures (:func:`~hessnb.hessian.curvature.product_backends`).
        Default: the first of those, ``"double-backward"`` for the Hessian.
    curvature : {"hessian", "ggn", "fisher"}
        The matrix the products are with (:mod:`hessnb.hessian.curvature`): the Hessian,
        the generalised Gauss-Newton matrix or the empirical Fisher. Losses, gradients,
        weighting, batch-norm semantics and the determinism check are the same for all.
    """

    def __init__(
        self,
        space: ParameterSpace,
        loss_fn: LossFn,
        batches: Iterable[tuple[Any, Any]],
        *,
        bn_mode: str = "eval",
        check_determinism: bool = True,
        transfer: bool = False,
        reduce: Reduce | None = None,
        cache: GraphCache | None = None,
        hvp: str | None = None,
        curvature: str = "hessian",
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        backends = product_backends(curvature)
        hvp = backends[0] if hvp is None else hvp
        if hvp not in backends:
            raise ValueError(f"hvp must be one of {backends} for {curvature!r}, got {hvp!r}")
        self.space, self.loss_fn, self.batches = space, loss_fn, batches
        self.bn_mode, self.check_determinism, self.transfer = bn_mode, check_determinism, transfer
        self.reduce, self.cache, self.hvp, self.curvature = reduce, cache, hvp, curvature
        self.functional = make_functional(space, loss_fn, curvature, hvp)
        self.loss_checked = False  # the functional's check of the loss passed on a batch
        self.caching = False  # set by the operator's reuse_graphs()
        self.batch_statistics = bn_mode == "train" and any(
            isinstance(m, BN_TYPES) for m in space.model.modules()
        )
        self.batch_sizes: list[int] = []
        self.fresh_passes = 0
        self._reference: tuple[tuple, list[tuple[int, float]]] | None = None

    # ------------------------------------------------------------------ semantics
    @contextlib.contextmanager
    def modes(self) -> Iterator[None]:
        """Set evaluation semantics; restore modes, flags and requires_grad afterwards."""
        model = self.space.model
        modules = list(model.modules())
        training = [m.training for m in modules]
        tracking = [getattr(m, "track_running_stats", None) for m in modules]
        all_params = list(model.parameters())
        requires = [p.requires_grad for p in all_params]
        selected = {id(p) for p in self.space.params}
        try:
            model.eval()
            if self.bn_mode == "train":
                for m in modules:
                    if isinstance(m, BN_TYPES):
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

    def _loss(self, inputs: Any, targets: Any, index: int) -> tuple[torch.Tensor, Any]:
        outputs = self.space.model(inputs)
        loss = self._checked(self.loss_fn(outputs, targets), index)
        self._check_curvature(outputs, targets, loss)
        return loss, outputs

    def _check_curvature(self, outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        """On the first batch, let the product function refuse an unsuitable loss.

        E.g. a GGN of a loss without curvature in the outputs, or an empirical Fisher of a
        loss that is not a mean of per-example terms (:mod:`hessnb.hessian.curvature`).
        """
        if self.functional is None or self.loss_checked:
            return
        self.functional.check(outputs, targets, loss)
        self.loss_checked = True

    @staticmethod
    def _checked(loss: Any, index: int) -> torch.Tensor:
        """``loss`` as a 0-d tensor; ValueError / NonFiniteError unless a finite scalar."""
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
        return loss.reshape(())

    # ------------------------------------------------------------------ determinism
    def _check_reference(self, key: tuple, losses: list[tuple[int, float]]) -> None:
        """Compare with the last fresh pass at the same parameter state, then remember."""
        previous = self._reference
        self._reference = (key, losses)
        if previous is None or previous[0] != key or not self.check_determinism:
            return
        reference = previous[1]
        rtol = 1e-10 if self.space.dtype == torch.float64 else 1e-5

        def differ(a: tuple[int, float], b: tuple[int, float]) -> bool:
            return a[0] != b[0] or not math.isclose(a[1], b[1], rel_tol=rtol, abs_tol=rtol)

        pairs = list(zip(losses, reference, strict=False))
        if len(losses) != len(reference) or any(differ(a, b) for a, b in pairs):
            first = next((i for i, (a, b) in enumerate(pairs) if differ(a, b)), len(pairs))
            raise NonDeterministicError(
                "two passes over the batches at the same parameters gave different per-batch "
                f"losses (first at batch {first}); the Hessian of a fixed dataset needs "
                "identical passes. Likely causes: a shuffling DataLoader (use shuffle=False), "
                "random data augmentation (use evaluation transforms), or randomness in the "
                "model's forward pass. Pass check_determinism=False only if the differences "
                "are tiny floating-point noise you accept."
            )

    # ------------------------------------------------------------------ passes
    def _graphs(self, build: bool, vectors: torch.Tensor | None) -> Iterator[BatchGraph]:
        """Each batch's loss and, when ``build``, gradients from a fresh pass over the data.

        With ``vectors`` ``(n_params, k)``, the double-backward backend builds the gradients'
        graphs (kept in the cache inside ``caching`` blocks); a functional backend computes
        the batch's products with the gradient (``BatchGraph.products``).
        """
        space, cache = self.space, self.cache
        functional = self.functional if vectors is not None else None
        block = space.unflatten_block(vectors) if functional is not None else []
        # inside a caching block a gradient pass builds (and keeps) the graphs too, so the
        # products that follow at these parameters reuse it
        create_graph = functional is None and (
            vectors is not None or (build and self.caching and cache is not None)
        )
        key = state_key(space.state)
        keep = create_graph and self.caching and cache is not None and cache.start(key)
        losses: list[tuple[int, float]] = []
        for index, batch in enumerate(self.batches):
            inputs, targets = prepare(batch, index, space.device, space.dtype, self.transfer)
            size = batch_size(inputs, targets)
            if size == 1 and self.batch_statistics:
                raise ValueError(
                    f"batch {index} holds one example, and batch norm in train mode cannot "
                    "normalise a batch of one; choose a batch size that leaves no batch of "
                    "one (e.g. drop or merge the last), or pass bn_mode='eval'"
                )
            counting = cache.counting() if keep else contextlib.nullcontext()
            with torch.set_grad_enabled(build), counting:
                if functional is not None:
                    entry = self._functional_entry(
                        functional, (inputs, targets), index, size, block
                    )
                else:
                    loss, outputs = self._loss(inputs, targets, index)
                    entry = BatchGraph(size, float(loss.detach()), correct_count(outputs, targets))
                    if build:
                        entry.grads, entry.live = self._first_backward(loss, index, create_graph)
            losses.append((entry.size, entry.loss))
            keep = keep and cache.keep(entry)
            yield entry
        if not losses:
            raise ValueError("batches is empty; pass at least one (inputs, targets) batch")
        self.fresh_passes += 1
        self.batch_sizes = [size for size, _ in losses]
        self._check_reference(key, losses)

    def _functional_entry(
        self,
        functional: FunctionalHVP,
        batch: tuple[Any, Any],
        index: int,
        size: int,
        block: list[torch.Tensor],
    ) -> BatchGraph:
        """One batch's loss, gradient and ``H V`` (block ``(k, *shape)`` per parameter)."""
        result = functional(*batch, block)
        loss = self._checked(result.loss, index)
        self._check_curvature(result.outputs, batch[1], loss)
        return BatchGraph(
            size,
            float(loss),
            correct_count(result.outputs, batch[1]),
            grads=result.grads,
            products=self.space.flatten_block(result.products),
        )

    def _first_backward(
        self, loss: torch.Tensor, index: int, create_graph: bool
    ) -> tuple[tuple[torch.Tensor, ...], list[int]]:
        if not loss.requires_grad:
            raise ValueError(
                f"the loss of batch {index} does not depend on the selected parameters "
                f"{self.space.names[:5]}; select parameters the model's output uses"
            )
        # Parameters the loss does not use (e.g. an unused head) get zero gradient
        # and zero Hessian rows instead of an autograd error.
        grads = torch.autograd.grad(
            loss,
            self.space.params,
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return grads, [j for j, g in enumerate(grads) if g.requires_grad]

    def _accumulate(
        self,
        totals: PassTotals,
        entries: Iterable[BatchGraph],
        tangents: list[list[torch.Tensor]],
        supports: list[list[int]] | None,
    ) -> None:
        space, k = self.space, len(tangents)
        # functional backends return whole products: restrict their rows afterwards
        mask = None if supports is None or self.functional is None else self._support_mask(supports)
        for entry in entries:
            totals.add(entry)
            if totals.gradient is not None:
                totals.gradient += entry.size * space.flatten([g.detach() for g in entry.grads])
            if entry.products is not None:  # computed with the pass (functional backends)
                products = entry.products if mask is None else entry.products * mask
                totals.products += entry.size * products
                continue
            for i, tangent in enumerate(tangents):
                inside = range(len(space.params)) if supports is None else supports[i]
                live = [j for j in entry.live if j in inside]
                if not live:  # gradient constant in these parameters: H = 0
                    continue
                hv = torch.autograd.grad(
                    [entry.grads[j] for j in live],
                    [space.params[j] for j in inside],
                    grad_outputs=[tangent[j] for j in live],
                    retain_graph=i < k - 1 or entry.kept,
                    allow_unused=True,
                    materialize_grads=True,
                )
                if supports is not None:  # zero rows outside the column's parameters
                    placed = [torch.zeros_like(p) for p in space.params]
                    for j, h in zip(inside, hv, strict=True):
                        placed[j] = h
                    hv = placed
                totals.products[:, i] += entry.size * space.flatten(hv)

    def _support_mask(self, supports: list[list[int]]) -> torch.Tensor:
        """``(n_params, k)`` float64: 1 on the coordinates of each column's parameters."""
        space = self.space
        mask = torch.zeros(space.n_params, len(supports), dtype=torch.float64, device=space.device)
        for i, support in enumerate(supports):
            pieces = space.unflatten(mask[:, i].clone())
            for j in support:
                pieces[j].fill_(1.0)
            mask[:, i] = space.flatten(pieces)
        return mask

    def run(
        self,
        vectors: torch.Tensor | None = None,
        need_gradient: bool = False,
        diagonal: bool = False,
    ) -> PassTotals:
        """One pass (over the data, or over cached graphs); returns per-example means.

        Parameters
        ----------
        vectors : torch.Tensor, shape (n_params, k), optional
            Directions for Hessian-vector products, in the model's dtype.
        need_gradient : bool
            Also sum the gradient.
        diagonal : bool
            Products with the diagonal block of the parameters each column touches:
            ``P_S H P_S v`` with ``S`` the parameters where ``v`` is non-zero. The double
            backward then differentiates only those parameters (cheaper than ``H v``).
        """
        space = self.space
        space.sync()
        n, k = space.n_params, (0 if vectors is None else vectors.shape[1])
        zeros = torch.zeros
        totals = PassTotals(
            gradient=zeros(n, dtype=torch.float64, device=space.device) if need_gradient else None,
            products=zeros(n, k, dtype=torch.float64, device=space.device) if k else None,
        )
        columns = [space.unflatten(vectors[:, i]) for i in range(k)]
        supports = (
            [[j for j, t in enumerate(column) if bool(t.any())] for column in columns]
            if diagonal
            else None
        )
        # per-column tangents for the double backward (functional backends take the block)
        tangents = columns if self.functional is None else []
        cached = (
            self.caching and self.cache is not None and self.cache.valid(state_key(space.state))
        )
        failure: BaseException | None = None
        try:
            with self.modes():
                entries = (
                    self.cache.entries
                    if cached
                    else self._graphs(need_gradient or k > 0, vectors if k else None)
                )
                self._accumulate(totals, entries, tangents, supports)
        except Exception as exc:  # distributed: tell the other ranks instead of hanging
            if self.reduce is None:
                raise
            failure = exc
        if self.reduce is not None:
            totals = totals.all_reduce(self.reduce, failure is not None, space.device)
        if failure is not None:
            raise failure
        return totals.mean()
