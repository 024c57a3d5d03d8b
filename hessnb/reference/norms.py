"""Batch norm that normalises with population statistics during training.

The paper's test of its hypothesis ("testing the hypothesis", E5 in ``shared/PAPER.md``)
trains a network whose batch-norm layers normalise with running (population) statistics
instead of each minibatch's: the running averages are still updated from every training
batch, but they enter the forward pass as constants, so the normalisation no longer
depends on the batch. The paper reports that the outliers of the Hessian then return and
training slows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BN_KINDS", "PopulationBatchNorm1d", "PopulationBatchNorm2d", "batch_norm"]

#: Values of the ``bn=`` option of the reference models.
BN_KINDS = (False, True, "batch", "population")


class _PopulationNorm:
    """Forward of the population variants (mixed into the torch batch-norm classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            with torch.no_grad():
                dims = [d for d in range(x.ndim) if d != 1]
                mean = x.mean(dim=dims)
                var = x.var(dim=dims, unbiased=True)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
                self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class PopulationBatchNorm1d(_PopulationNorm, nn.BatchNorm1d):
    """``BatchNorm1d`` normalising with its running statistics, in training too."""


class PopulationBatchNorm2d(_PopulationNorm, nn.BatchNorm2d):
    """``BatchNorm2d`` normalising with its running statistics, in training too."""


def batch_norm(kind: bool | str, features: int, dims: int) -> nn.Module | None:
    """The normalisation layer for ``bn=kind`` (None for no batch norm).

    Parameters
    ----------
    kind : {False, True, "batch", "population"}
        ``True``/``"batch"``: standard batch norm; ``"population"``: the population
        variants above.
    features : int
        Channels (or features).
    dims : {1, 2}
        ``BatchNorm1d`` or ``BatchNorm2d``.
    """
    if kind not in BN_KINDS:
        raise ValueError(f"bn must be one of {BN_KINDS}, got {kind!r}")
    if kind is False:
        return None
    if kind == "population":
        return (PopulationBatchNorm1d if dims == 1 else PopulationBatchNorm2d)(features)
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features)
