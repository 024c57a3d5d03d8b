"""Pure float64 linear algebra: the operator protocol, Lanczos, Krylov storage, quadrature.

Nothing here knows about ``torch.nn``: an operator is anything with ``shape`` and a block
product (:mod:`hessnb.linalg.operator`).
"""

from hessnb.linalg.lanczos import LanczosResult, lanczos, lanczos_block
from hessnb.linalg.operator import MatrixOperator, Operator, SymmetricOperator, as_operator
from hessnb.linalg.quadrature import (
    tridiagonal_to_quadrature,
    wasserstein_bound,
    wasserstein_distance,
)

__all__ = [
    "LanczosResult",
    "MatrixOperator",
    "Operator",
    "SymmetricOperator",
    "as_operator",
    "lanczos",
    "lanczos_block",
    "tridiagonal_to_quadrature",
    "wasserstein_bound",
    "wasserstein_distance",
]
