"""Large planted spectra as operators, without a dense matrix (deflation and bound tests)."""

from __future__ import annotations

import numpy as np
import torch


class Diagonal:
    """``diag(eigenvalues)`` with only ``shape`` and ``@`` (any symmetric operator works)."""

    def __init__(self, eigenvalues: np.ndarray) -> None:
        self.diagonal = torch.as_tensor(eigenvalues, dtype=torch.float64)
        self.shape = (self.diagonal.numel(),) * 2

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.diagonal[:, None] * vectors.reshape(self.shape[0], -1)


def planted(n: int, outliers: int, seed: int = 0) -> np.ndarray:
    """A gamma bulk in about ``[-0.005, 0.3]`` plus ``outliers`` values in ``[3, 30]``."""
    rng = np.random.default_rng(seed)
    bulk = rng.gamma(0.5, 0.02, n - outliers) - 0.005
    return np.sort(np.r_[bulk, np.linspace(3.0, 30.0, outliers)])
