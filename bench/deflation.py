"""Deflated against plain SLQ at an equal number of HVPs, on exact spectra with outliers.

Both estimates come from the same Lanczos run per seed (deflation reweights it and costs
no operator product), so the HVP count is equal by construction. Cases: planted spectra
(a gamma bulk plus 0, 1 and 9 outliers, ``n`` = 5,000) and the trained 5,053-parameter
digits CNN of ``bench.cpu``'s accuracy rows, whose exact spectrum comes from its dense
float64 Hessian (10 classes: its C - 1 = 9 outliers). The table gives the mean relative
W1 (``W1 / (lambda_max - lambda_min)``) over the seeds with one probe, and the ratio
deflated / plain (target: at most 0.5 on the cases with outliers).

Run from the repository root: ``python -m bench.deflation [--seeds 8] [--lanczos-steps 90]
[--planted-only]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from bench.common import (
    Row,
    check,
    digits_batches,
    digits_cnn,
    fit,
    format_table,
    make_parser,
    spectral_errors,
)
from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.slq import estimate

__all__ = ["Diagonal", "compare", "main", "planted_spectrum"]


def planted_spectrum(n: int, outliers: int, seed: int = 0) -> np.ndarray:
    """A gamma bulk in about ``[-0.005, 0.3]`` plus ``outliers`` values in ``[3, 30]``."""
    rng = np.random.default_rng(seed)
    bulk = rng.gamma(0.5, 0.02, n - outliers) - 0.005
    return np.sort(np.r_[bulk, np.linspace(3.0, 30.0, outliers)])


class Diagonal:
    """``diag(eigenvalues)`` as an operator (only ``shape`` and ``@``)."""

    def __init__(self, eigenvalues: np.ndarray) -> None:
        self.diagonal = torch.as_tensor(eigenvalues, dtype=torch.float64)
        self.shape = (self.diagonal.numel(), self.diagonal.numel())

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.diagonal[:, None] * vectors.reshape(self.shape[0], -1)


def compare(
    op: object, exact: np.ndarray, steps: int, seeds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative W1 of plain and deflated SLQ per seed, and the deflated counts.

    Returns
    -------
    plain, deflated : array, shape (seeds,)
    counts : array, shape (seeds,)
        Ritz values deflated per seed (one probe).
    """
    plain, deflated, counts = [], [], []
    for seed in range(seeds):
        settings = SLQSettings(lanczos_steps=steps, top_k=1, seed=seed, deflate=False)
        est = estimate(op, settings)
        est_d = estimate(op, settings.replace(deflate=True))
        plain.append(spectral_errors((est.nodes, est.weights), exact)[0])
        deflated.append(spectral_errors((est_d.nodes, est_d.weights), exact)[0])
        counts.append(int(est_d.n_deflated[0]))
    return np.array(plain), np.array(deflated), np.array(counts)


def cnn_case() -> tuple[HessianOperator, np.ndarray]:
    """The trained 5,053-parameter digits CNN's operator and exact eigenvalues."""
    batches = digits_batches()
    model = digits_cnn((4, 8, 9), seed=1)
    fit(model, batches)
    op = HessianOperator(model, F.cross_entropy, batches)
    dense = HessianOperator(model, F.cross_entropy, batches, dtype=torch.float64).dense()
    return op, np.linalg.eigvalsh(dense.numpy())


def main(argv: list[str] | None = None) -> list[Row]:
    parser = make_parser("bench.deflation", __doc__ or "")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--lanczos-steps", type=int, default=90)
    parser.add_argument(
        "--planted-only",
        action="store_true",
        help="leave out the CNN (its dense float64 Hessian takes minutes)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases: dict[str, Callable[[], tuple[object, np.ndarray]]] = {
        f"planted, {c} outliers": lambda c=c: (
            Diagonal(planted_spectrum(5000, c)),
            planted_spectrum(5000, c),
        )
        for c in (0, 1, 9)
    }
    if not args.planted_only:
        cases["digits CNN, 5,053 params"] = cnn_case
    rows = []
    for name, build in cases.items():
        op, exact = build()
        plain, deflated, counts = compare(op, exact, args.lanczos_steps, args.seeds)
        ratio = deflated.mean() / plain.mean()
        se = deflated.std(ddof=1) / math.sqrt(args.seeds)
        note = (
            f"plain {plain.mean():.3g}, deflated {deflated.mean():.3g} ± {se:.2g} (se) W1/range; "
            f"{args.seeds} seeds, {args.lanczos_steps} steps, 1 probe; deflated "
            f"{counts.min()}-{counts.max()} Ritz values"
        )
        has_outliers = not name.startswith("planted, 0")
        rows.append(
            check(f"deflated / plain W1, {name}", ratio, 0.5, note)
            if has_outliers
            else Row(f"deflated / plain W1, {name}", ratio, note=note)
        )
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
