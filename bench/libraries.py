"""Third-party SLQ implementations set up like hessnb's, for side-by-side timing and accuracy.

hessian-eigenthings and curvlinops are never dependencies of hessnb: each is used only when
installed (``pip install --no-deps hessian-eigenthings curvlinops-for-pytorch``).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.common import Batches, Quadrature

__all__ = ["LIBRARIES", "Library", "curvlinops_slq", "eigenthings_slq", "installed", "set_up"]

#: Display name -> importable module.
LIBRARIES = {"hessian-eigenthings": "hessian_eigenthings", "curvlinops": "curvlinops"}


@dataclass
class Library:
    """A third-party SLQ, set up on one model and data set.

    Attributes
    ----------
    name : str
        Display name (a key of :data:`LIBRARIES`).
    run : callable
        ``run(seed)`` performs the ``steps``-step, one-probe density and returns its
        quadrature ``(nodes, weights)``, each ``(1, m)``.
    note : str
        Which function of the library is run.
    """

    name: str
    run: Callable[[int], Quadrature]
    note: str = ""


def installed(name: str) -> bool:
    """Whether the library ``name`` (a key of :data:`LIBRARIES`) can be imported."""
    return importlib.util.find_spec(LIBRARIES[name]) is not None


def eigenthings_slq(model: nn.Module, batches: Batches, steps: int) -> Library:
    """hessian-eigenthings' ``spectral_density`` (Rademacher probe, full re-orth, model dtype).

    Its full-dataset HVP averages batches with equal weights; the loss is rescaled by
    ``batch size x batches / N`` so that it too is the Hessian of the mean loss.
    """
    import hessian_eigenthings as he

    n_examples = sum(len(y) for _, y in batches)
    scale = {id(x): len(y) * len(batches) / n_examples for x, y in batches}

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(net(x), y) * scale[id(x)]

    op = he.HessianOperator(model, batches, loss_fn)

    def run(seed: int) -> Quadrature:
        result = he.spectral_density(op, num_runs=1, lanczos_steps=steps, seed=seed)
        return result.raw_eigenvalues.double().numpy(), result.raw_weights.double().numpy()

    return Library("hessian-eigenthings", run, "spectral_density(num_runs=1)")


def curvlinops_slq(model: nn.Module, batches: Batches, steps: int) -> Library:
    """curvlinops' Papyan (2020) Lanczos (no re-orthogonalisation, model dtype).

    ``lanczos_approximate_spectrum`` first estimates the spectral boundaries with ARPACK
    (extra HVPs) and returns only a gridded density; its Lanczos kernel ``fast_lanczos`` is
    what runs here, and its Ritz values / squared first components are the quadrature.
    """
    from curvlinops import HessianLinearOperator
    from curvlinops.papyan2020traces.spectrum import fast_lanczos

    params = [p for p in model.parameters() if p.requires_grad]
    op = HessianLinearOperator(
        model, nn.CrossEntropyLoss(), params, batches, check_deterministic=False
    )

    def run(seed: int) -> Quadrature:
        torch.manual_seed(seed)
        evals, evecs = fast_lanczos(op, steps)
        weights = evecs[0, :] ** 2
        return evals.double().numpy()[None], weights.double().numpy()[None]

    return Library("curvlinops", run, "fast_lanczos (no re-orth)")


_SET_UP: dict[str, Callable[[nn.Module, Batches, int], Library]] = {
    "hessian-eigenthings": eigenthings_slq,
    "curvlinops": curvlinops_slq,
}


def set_up(model: nn.Module, batches: Batches, steps: int) -> tuple[list[Library], list[str]]:
    """Every installed library set up on ``model`` and ``batches``; names of the missing ones."""
    found, missing = [], []
    for name in LIBRARIES:
        if not installed(name):
            missing.append(name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found.append(_SET_UP[name](model, batches, steps))
    return found, missing
