"""Which curvature matrix of the loss a data pass multiplies by, one batch at a time.

- ``"hessian"``: ``d2 L / d theta2`` of the batch-mean loss ``L``, by one of the HVP
  backends of :mod:`hessnb.hessian.hvp`.
- ``"ggn"``: the generalised Gauss-Newton matrix ``J^T (d2 L / d f2) J`` of the batch, with
  ``f`` the batch's outputs (``(B, ...)``) and ``J = d f / d theta`` (:func:`ggn_products`).
  It drops the second-order terms of the network from the Hessian, and is positive
  semi-definite when the loss is convex in the outputs (cross-entropy, MSE).
- ``"fisher"``: the empirical Fisher ``(1/B) sum_i g_i g_i^T`` of the batch, with ``g_i``
  the gradient of example ``i``'s loss (:func:`fisher_products`).

GGN and empirical-Fisher products use only ``torch.func.jvp`` and ``torch.func.vjp`` of the
network (no double backward, no graph cache; what ``provenance()["hvp"]`` calls
``"jvp-vjp"``). Both take the batch's outputs from one forward of the whole batch, so with
batch norm in train mode ``J`` couples the examples of a batch exactly as the Hessian's
semantics do. The data pass weights every batch's products by its size and divides by the
number of examples, as for the Hessian.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from hessnb.hessian.hvp import HVP_BACKENDS, FunctionalHVP, resolve_hvp
from hessnb.hessian.params import ParameterSpace

__all__ = [
    "CURVATURES",
    "DESCRIPTIONS",
    "JVP_VJP",
    "FisherProducts",
    "GGNProducts",
    "fisher_products",
    "check_curvatures",
    "ggn_products",
    "make_functional",
    "per_example_losses",
    "product_backends",
    "resolve_products",
    "single_output",
]

#: The curvature matrices a data pass can multiply by.
CURVATURES = ("hessian", "ggn", "fisher")
#: How GGN and empirical-Fisher products are computed (their ``provenance()["hvp"]``).
JVP_VJP = "jvp-vjp"
#: Each curvature in words, for messages.
DESCRIPTIONS = {
    "hessian": "the Hessian",
    "ggn": "the generalised Gauss-Newton matrix",
    "fisher": "the empirical Fisher",
}

LossFn = Callable[[Any, Any], torch.Tensor]


def check_curvatures(curvature: str | Sequence[str]) -> tuple[str, ...]:
    """One curvature name or several, as a tuple of distinct names from :data:`CURVATURES`.

    Raises
    ------
    ValueError
        For an empty sequence, an unknown name or a name given twice.
    TypeError
        For something that is neither a string nor a sequence of strings.
    """
    names = (curvature,) if isinstance(curvature, str) else curvature
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"curvature must be one of {CURVATURES} or a list of them, got {curvature!r}"
        )
    unknown = [n for n in names if n not in CURVATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"curvature must be one of {CURVATURES} or a list of distinct ones, got {curvature!r}"
        )
    return tuple(names)


def product_backends(curvature: str) -> tuple[str, ...]:
    """The product backends a data pass accepts for ``curvature`` (the default first).

    Raises
    ------
    ValueError
        For a curvature not in :data:`CURVATURES`.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    return HVP_BACKENDS if curvature == "hessian" else (JVP_VJP,)


def resolve_products(curvature: str, hvp: str, device: torch.device) -> str:
    """The product backend for ``curvature`` given an operator's ``hvp=`` choice.

    Parameters
    ----------
    curvature : {"hessian", "ggn", "fisher"}
    hvp : str
        ``HessianOperator(hvp=...)``: a backend of :data:`~hessnb.hessian.hvp.HVP_CHOICES`
        for the Hessian; only ``"auto"`` for the other curvatures.
    device : torch.device
        Where the model lives (``"auto"`` resolves per device type for the Hessian).

    Returns
    -------
    str
        One of :func:`product_backends` ``(curvature)``.

    Raises
    ------
    ValueError
        For an unknown curvature or backend, or a Hessian backend asked of another curvature.
    """
    product_backends(curvature)
    if curvature == "hessian":
        return resolve_hvp(hvp, device)
    if hvp != "auto":
        raise ValueError(
            f"hvp={hvp!r} chooses how Hessian-vector products are computed, but "
            f"{DESCRIPTIONS[curvature]} is always multiplied by jvp and vjp of the network "
            f"({JVP_VJP!r}: no double backward, no graph cache); leave hvp='auto', or use "
            "HessianOperator for the Hessian's backends"
        )
    return JVP_VJP


def single_output(outputs: Any, curvature: str) -> torch.Tensor:
    """``outputs`` if it is one floating-point tensor; ValueError otherwise.

    The GGN and the empirical Fisher differentiate the network's output, so it has to be
    the one tensor the loss is taken of.
    """
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        what = (
            f"a {outputs.dtype} tensor"
            if isinstance(outputs, torch.Tensor)
            else f"a {type(outputs).__name__}"
        )
        raise ValueError(
            f"{DESCRIPTIONS[curvature]} differentiates the model's output, so the model must "
            f"return one floating-point tensor (the outputs loss_fn takes), but it returned "
            f"{what}; wrap the model so that forward() returns that tensor only"
        )
    return outputs


def per_example_losses(
    loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``loss_fn(outputs[i:i+1], targets[i:i+1])`` for every example ``i``, shape ``(B,)``.

    Vectorised with ``torch.func.vmap`` over the leading dimension of both.
    """

    def one(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output.unsqueeze(0), target.unsqueeze(0)).reshape(())

    return vmap(one)(outputs, targets)


def ggn_products(
    model: nn.Module,
    loss_fn: LossFn,
    params: dict[str, torch.Tensor],
    tangents: dict[str, torch.Tensor],
    batch: tuple[Any, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[torch.Tensor, Any]]:
    """Gradient, ``G V = J^T H_out J V`` and ``(loss, outputs)`` of one batch.

    Parameters are those of :func:`~hessnb.hessian.hvp.batch_products`. ``J V`` is a
    ``jvp`` of the network (``functional_call`` on the whole batch), ``H_out (J V)`` a
    ``vjp`` of the loss's gradient **in the outputs only** (no derivative of the network;
    ``H_out`` of shape ``(B * outputs, B * outputs)`` is never formed), and ``J^T (.)``
    the network's ``vjp`` from the forward that also gives the gradient; all vmapped over
    the block's ``k`` columns.

    Returns
    -------
    grads : dict of str to torch.Tensor
        The gradient of the batch loss, shaped like ``params``.
    products : dict of str to torch.Tensor
        ``G V``, each ``(k, *shape)``.
    aux : (loss, outputs)
    """
    inputs, targets = batch

    def outputs_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return single_output(functional_call(model, p, (inputs,)), "ggn")

    def loss_of(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = loss_fn(outputs, targets).reshape(())
        return loss, loss

    outputs, pullback = vjp(outputs_of, params)
    # H_out is symmetric, so H_out u is the vjp of the loss's output gradient along u
    # (reverse over reverse through the loss only; forward-mode AD of F.mse_loss's
    # backward fails in torch 2.14 with "ZeroTensors are immutable")
    slope, curve, loss = vjp(grad(loss_of, has_aux=True), outputs, has_aux=True)
    (grads,) = pullback(slope)

    def along(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, jv = jvp(outputs_of, (params,), (v,))
        (hjv,) = curve(jv)
        (product,) = pullback(hjv)
        return product

    return grads, vmap(along)(tangents), (loss, outputs)


def fisher_products(
    model: nn.Module,
    loss_fn: LossFn,
    params: dict[str, torch.Tensor],
    tangents: dict[str, torch.Tensor],
    batch: tuple[Any, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[torch.Tensor, Any]]:
    """Gradient, ``F V = (1/B) J_l^T J_l V`` and ``(loss, outputs)`` of one batch.

    Parameters are those of :func:`~hessnb.hessian.hvp.batch_products`. ``l(theta)`` is
    the ``(B,)`` vector of per-example losses of the batch's outputs
    (:func:`per_example_losses`), so the rows of ``J_l`` are the per-example gradients
    ``g_i`` and ``J_l^T J_l = sum_i g_i g_i^T``. ``J_l V`` is a ``jvp``, ``J_l^T (.)`` a
    ``vjp``, vmapped over the block's ``k`` columns.

    Returns
    -------
    grads : dict of str to torch.Tensor
        The gradient of the batch loss ``loss_fn(outputs, targets)``, shaped like ``params``.
    products : dict of str to torch.Tensor
        ``F V``, each ``(k, *shape)``.
    aux : (loss, outputs)
    """
    inputs, targets = batch

    def losses_of(
        p: dict[str, torch.Tensor],
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        outputs = single_output(functional_call(model, p, (inputs,)), "fisher")
        per = per_example_losses(loss_fn, outputs, targets)
        return (per, loss_fn(outputs, targets).reshape(())), outputs

    (per, loss), pullback, outputs = vjp(losses_of, params, has_aux=True)
    (grads,) = pullback((torch.zeros_like(per), torch.ones_like(loss)))
    size = per.shape[0]

    def along(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, (jv, _), _ = jvp(losses_of, (params,), (v,), has_aux=True)
        (product,) = pullback((jv / size, torch.zeros_like(loss)))
        return product

    return grads, vmap(along)(tangents), (loss, outputs)


class GGNProducts(FunctionalHVP):
    """Per-batch loss, gradient and GGN products (:func:`ggn_products`).

    Parameters
    ----------
    space : ParameterSpace
        The selected parameters (``J`` is taken in these only).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch.
    """

    def __init__(self, space: ParameterSpace, loss_fn: LossFn) -> None:
        super().__init__(space, loss_fn, function=ggn_products)

    def check(self, outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        """Refuse a loss whose Hessian in the outputs is zero (the GGN would be zero).

        The loss's gradient in the outputs must depend on them, and its derivative along
        one random direction (a fixed seed) must not vanish.

        Raises
        ------
        ValueError
            When the outputs are not one tensor, or the loss has no curvature in them.
        """
        outputs = single_output(outputs, "ggn").detach()
        with torch.enable_grad():
            point = outputs.requires_grad_(True)
            (slope,) = torch.autograd.grad(
                self.loss_fn(point, targets).reshape(()),
                point,
                create_graph=True,
                allow_unused=True,
            )
            flat = slope is None or not slope.requires_grad
            if not flat:
                generator = torch.Generator(device=point.device).manual_seed(0)
                direction = torch.randn(
                    point.shape, generator=generator, dtype=point.dtype, device=point.device
                )
                (curve,) = torch.autograd.grad(slope, point, direction, allow_unused=True)
                flat = curve is None or not bool(torch.any(curve != 0))
        if flat:
            raise ValueError(
                "the generalised Gauss-Newton matrix of this loss is zero: the loss's Hessian "
                "with respect to the model's outputs vanishes (its gradient in the outputs is "
                "constant or piecewise constant, as for l1_loss). Use HessianOperator for the "
                "Hessian, or a loss with curvature in its outputs (cross-entropy, MSE)"
            )


class FisherProducts(FunctionalHVP):
    """Per-batch loss, gradient and empirical-Fisher products (:func:`fisher_products`).

    Parameters
    ----------
    space : ParameterSpace
        The selected parameters (the ``g_i`` are taken in these only).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean of per-example losses of a batch.
    """

    def __init__(self, space: ParameterSpace, loss_fn: LossFn) -> None:
        super().__init__(space, loss_fn, function=fisher_products)

    def check(self, outputs: Any, targets: Any, loss: torch.Tensor) -> None:
        """Refuse a loss that is not the mean of its per-example losses.

        Compares the mean of :func:`per_example_losses` with ``loss`` (relative tolerance
        ``1e-10`` in float64, ``1e-5`` in float32, ``1e-2`` in 16-bit types).

        Raises
        ------
        ValueError
            When the outputs are not one tensor, the targets not one tensor of examples,
            ``loss_fn`` cannot be evaluated per example, or the means differ.
        """
        outputs = single_output(outputs, "fisher").detach()
        if not (
            isinstance(targets, torch.Tensor)
            and targets.ndim > 0
            and targets.shape[0] == outputs.shape[0]
        ):
            got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)
            raise ValueError(
                "the empirical Fisher takes each example's loss "
                "loss_fn(outputs[i:i+1], targets[i:i+1]), so the targets must be one tensor "
                f"with the batch's {outputs.shape[0]} examples along its first dimension; "
                f"got {got}"
            )
        with torch.no_grad():
            try:
                per = per_example_losses(self.loss_fn, outputs, targets)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(
                    "the empirical Fisher evaluates loss_fn on one example at a time "
                    "(torch.func.vmap of loss_fn(outputs[i:i+1], targets[i:i+1])), which "
                    f"failed: {exc}"
                ) from exc
        mean, total = float(per.double().mean()), float(loss)
        rtol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(outputs.dtype, 1e-2)
        scale = float(per.double().abs().mean())
        if not math.isclose(mean, total, rel_tol=rtol, abs_tol=rtol * scale):
            raise ValueError(
                "the empirical Fisher needs loss_fn(outputs, targets) to be the mean of "
                "per-example losses (negative log-likelihood terms), so that each example's "
                "gradient g_i is defined; on the first batch the mean of "
                f"loss_fn(outputs[i:i+1], targets[i:i+1]) is {mean:.8g} but "
                f"loss_fn(outputs, targets) is {total:.8g}. A loss with reduction='sum', "
                "class weights, or terms that couple the examples of a batch does not "
                "qualify: use reduction='mean' of per-example terms, or GGNOperator / "
                "HessianOperator"
            )


def make_functional(
    space: ParameterSpace, loss_fn: LossFn, curvature: str, hvp: str
) -> FunctionalHVP | None:
    """The data pass's per-batch product function, or None for the double backward.

    Parameters
    ----------
    space : ParameterSpace
    loss_fn : callable
    curvature : {"hessian", "ggn", "fisher"}
    hvp : str
        A backend of :func:`product_backends` ``(curvature)``.
    """
    if curvature == "ggn":
        return GGNProducts(space, loss_fn)
    if curvature == "fisher":
        return FisherProducts(space, loss_fn)
    if hvp == "double-backward":
        return None
    return FunctionalHVP(space, loss_fn, compiled=hvp == "compile")
