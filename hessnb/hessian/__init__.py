"""The Hessian of a model's loss over a whole dataset: parameters, data pass, graph cache,
and the thin operator that joins them (:class:`HessianOperator`), with the generalised
Gauss-Newton matrix (:class:`GGNOperator`) and the empirical Fisher
(:class:`EmpiricalFisherOperator`) over the same data pass, and any of them seen through an
optimizer's diagonal preconditioner (:class:`PreconditionedOperator`)."""

from hessnb.hessian.datapass import BN_MODES
from hessnb.hessian.operator import EmpiricalFisherOperator, GGNOperator, HessianOperator
from hessnb.hessian.params import ParameterSpace
from hessnb.hessian.preconditioned import (
    PreconditionedOperator,
    PreconditionerError,
    adam_preconditioner,
)

__all__ = [
    "BN_MODES",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "HessianOperator",
    "ParameterSpace",
    "PreconditionedOperator",
    "PreconditionerError",
    "adam_preconditioner",
]
