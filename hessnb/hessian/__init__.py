"""The Hessian of a model's loss over a whole dataset: parameters, data pass, graph cache,
and the thin operator that joins them (:class:`HessianOperator`)."""

from hessnb.hessian.datapass import BN_MODES
from hessnb.hessian.operator import HessianOperator
from hessnb.hessian.params import ParameterSpace

__all__ = ["BN_MODES", "HessianOperator", "ParameterSpace"]
