"""How one batch's Hessian-vector products are computed: the HVP backends.

- ``"double-backward"``: a first backward with ``create_graph=True``, then one backward
  of the gradient per column of the block (``torch.autograd.grad``). Inside
  :meth:`~hessnb.hessian.operator.HessianOperator.reuse_graphs` the forward and first
  backward of each batch are kept (:mod:`hessnb.hessian.graphcache`), so a further HVP
  is one backward pass per column.
- ``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad`` of the batch
  loss, over the selected parameters with ``torch.func.functional_call``, vmapped over
  the block's columns (the forward and gradient are computed once for the block, the
  tangents batched). Nothing is cached: every pass recomputes the forward.
- ``"compile"``: the forward-over-reverse function under ``torch.compile`` (compiled on
  first use and again for each new batch shape or block width).
- ``"auto"``: :data:`AUTO_BACKEND` for the device type.

All backends compute the Hessian of the same batch-mean loss with the same batch-norm
semantics (the module's modes, set by the data pass), so the data pass weights and sums
them identically.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from hessnb.hessian.params import ParameterSpace

__all__ = [
    "AUTO_BACKEND",
    "HVP_BACKENDS",
    "HVP_CHOICES",
    "BatchFunction",
    "BatchProducts",
    "CompileUnavailableError",
    "FunctionalHVP",
    "batch_products",
    "compile_unavailable_reason",
    "own_code",
    "resolve_hvp",
]

#: Backends that compute products (what ``provenance()["hvp"]`` can be).
HVP_BACKENDS = ("double-backward", "forward-over-reverse", "compile")
#: Accepted values of ``HessianOperator(hvp=...)``.
HVP_CHOICES = ("auto", *HVP_BACKENDS)
#: What ``"auto"`` picks per device type. CPU: double backward with the graph cache was
#: the fastest for blocks of 1 and 8 in ``python -m bench.cpu`` (BENCHMARKS.md, "HVP
#: backends"). CUDA: double backward until ``python -m bench.gpu`` measures otherwise on
#: a GPU (no GPU figures are recorded yet). Other device types: double backward.
AUTO_BACKEND = {"cpu": "double-backward", "cuda": "double-backward"}

LossFn = Callable[[Any, Any], torch.Tensor]


class CompileUnavailableError(RuntimeError):
    """``hvp="compile"`` was asked for where ``torch.compile`` cannot run."""


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot generate code for ``device`` here, or None if it can.

    CPU code needs a C++ compiler (``$CXX``, else ``g++``; ``clang++`` on macOS), CUDA code
    needs Triton, and ``torch.compile`` itself refuses unsupported Python builds.
    """
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile needs Triton for CUDA code, and the triton package is not installed"
    if device.type == "cpu":
        default = "clang++" if sys.platform == "darwin" else "g++"
        compiler = os.environ.get("CXX") or default
        if shutil.which(compiler) is None:
            return (
                f"torch.compile needs a C++ compiler for CPU code and {compiler!r} "
                "(from $CXX, else the default) is not on PATH; install one (e.g. g++) "
                "or set CXX"
            )
    try:
        torch.compile(lambda t: t)  # refuses unsupported Python versions and builds
    except RuntimeError as exc:
        return f"torch.compile is not supported here: {exc}"
    return None


def resolve_hvp(choice: str, device: torch.device) -> str:
    """The backend that ``choice`` means on ``device`` (one of :data:`HVP_BACKENDS`).

    Raises
    ------
    ValueError
        For a value not in :data:`HVP_CHOICES`.
    CompileUnavailableError
        For ``"compile"`` where ``torch.compile`` cannot run (the message says why).
    """
    if choice not in HVP_CHOICES:
        raise ValueError(f"hvp must be one of {HVP_CHOICES}, got {choice!r}")
    if choice == "auto":
        return AUTO_BACKEND.get(device.type, "double-backward")
    if choice == "compile":
        reason = compile_unavailable_reason(device)
        if reason is not None:
            raise CompileUnavailableError(
                f"hvp='compile' cannot be used: {reason}. Use hvp='forward-over-reverse' "
                "(the same computation without compilation) or hvp='auto'"
            )
    return choice


@dataclass
class BatchProducts:
    """One batch's loss, outputs, gradient and block of Hessian-vector products.

    Attributes
    ----------
    loss : torch.Tensor, shape ()
        The batch-mean loss.
    outputs : object
        The model's outputs (for the correct count).
    grads : tuple of torch.Tensor
        Gradient of ``loss``, shaped like the selected parameters.
    products : list of torch.Tensor
        ``H_batch V`` per parameter, each ``(k, *parameter.shape)``.
    """

    loss: torch.Tensor
    outputs: Any
    grads: tuple[torch.Tensor, ...]
    products: list[torch.Tensor]


def batch_products(
    model: nn.Module,
    loss_fn: LossFn,
    params: dict[str, torch.Tensor],
    tangents: dict[str, torch.Tensor],
    batch: tuple[Any, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[torch.Tensor, Any]]:
    """Gradient, ``H V`` and ``(loss, outputs)`` of one batch by forward-over-reverse.

    Parameters
    ----------
    model : nn.Module
        Called with ``params`` in place of its parameters of those names
        (``torch.func.functional_call``); its modes and other tensors are its own.
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of the batch.
    params : dict of str to torch.Tensor
        The selected parameters by name.
    tangents : dict of str to torch.Tensor
        The block's ``k`` columns per parameter, each ``(k, *shape)``.
    batch : (inputs, targets)

    Returns
    -------
    grads : dict of str to torch.Tensor
        The gradient, shaped like ``params``.
    products : dict of str to torch.Tensor
        ``H V``, each ``(k, *shape)``: ``jvp`` of ``grad``, vmapped over the columns, so
        the forward and the gradient are computed once and only the tangents are batched.
    aux : (loss, outputs)
    """
    inputs, targets = batch

    def loss_of(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, Any]]:
        outputs = functional_call(model, p, (inputs,))
        loss = loss_fn(outputs, targets).reshape(())
        return loss, (loss, outputs)

    def along(v: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        return jvp(grad(loss_of, has_aux=True), (params,), (v,), has_aux=True)

    return vmap(along, out_dims=(None, 0, None))(tangents)


def own_code(function: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``function`` with a code object of its own.

    ``torch.compile`` keeps compiled variants, and its limit on recompilations (8), per
    code object; with a copy per operator, one operator's models, shapes and block widths
    do not use up another's (past the limit it would run uncompiled).
    """
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


#: A per-batch product function with the signature and results of :func:`batch_products`.
BatchFunction = Callable[
    [nn.Module, LossFn, dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[Any, Any]],
    tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[torch.Tensor, Any]],
]


class FunctionalHVP:
    """Per-batch loss, gradient and HVPs by forward-over-reverse (:func:`batch_products`).

    Parameters
    ----------
    space : ParameterSpace
        The selected parameters; the others (and buffers) are the module's own.
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch.
    compiled : bool
        Run :func:`batch_products` under ``torch.compile`` (compiled on first use, again
        for new batch shapes, block widths or module modes), over every parameter of the
        model (see :meth:`__call__`).
    function : callable, optional
        The per-batch product function (default :func:`batch_products`, the Hessian); the
        other curvatures of :mod:`hessnb.hessian.curvature` pass theirs.
    """

    def __init__(
        self,
        space: ParameterSpace,
        loss_fn: LossFn,
        compiled: bool = False,
        function: BatchFunction = batch_products,
    ) -> None:
        self.space, self.loss_fn, self.compiled = space, loss_fn, compiled
        self.function = torch.compile(own_code(function), dynamic=False) if compiled else function

    def check(self, outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        """Refuse a loss whose products would be meaningless (called on the first batch).

        The Hessian exists for every twice-differentiable loss, so nothing is refused here;
        the other curvatures override this.

        Parameters
        ----------
        outputs
            The model's outputs for the first batch.
        targets
            That batch's targets.
        loss : torch.Tensor, shape ()
            ``loss_fn(outputs, targets)``.
        """

    def __call__(self, inputs: Any, targets: Any, block: Sequence[torch.Tensor]) -> BatchProducts:
        """Loss, outputs, gradient and ``H V`` of one batch for ``block``.

        Parameters
        ----------
        inputs, targets
            One batch, on the model's device.
        block : sequence of torch.Tensor
            The block's columns per selected parameter, each ``(k, *parameter.shape)``.
        """
        names = self.space.names
        params = {n: p.detach() for n, p in zip(names, self.space.params, strict=True)}
        tangents = dict(zip(names, block, strict=True))
        if self.compiled:
            # torch.compile (2.14) fails to trace batch_norm when its input is
            # differentiated and its weight is not (an internal assert on _fw_primal), so
            # compiled code differentiates every parameter, the unselected along zero.
            k = block[0].shape[0]
            for n, p in self.space.model.named_parameters():
                if n not in params:
                    params[n] = p.detach()
                    tangents[n] = p.new_zeros((k, *p.shape))
        grads, hv, (loss, outputs) = self.function(
            self.space.model, self.loss_fn, params, tangents, (inputs, targets)
        )
        return BatchProducts(loss, outputs, tuple(grads[n] for n in names), [hv[n] for n in names])
