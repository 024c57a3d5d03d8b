"""A-priori and a-posteriori Wasserstein-1 bounds against the measured W1 of SLQ runs.

Run from the repository root: ``python -m bench.bounds`` (``--seeds``, ``--steps``,
``--examples``, ``--threads``; ``--quick``: a tiny network, a few minutes). On the CPU
benchmark's accuracy network (digits CNN of widths ``(4, 8, 9)``, 5,053 parameters,
fitted as in ``python -m bench.cpu``) the exact spectrum comes from the dense float64
Hessian. Each probe seed runs :func:`hessnb.slq.estimate` (float32 HVPs, one probe,
plain SLQ: ``deflate=False``, the estimate the bound is about) through
:class:`RecordingOperator`, which keeps the Lanczos vectors it is applied to, so that the
tridiagonal of that very run (which ``estimate`` does not return) is rebuilt by
:func:`tridiagonal`. The table prints per seed, relative to the exact spectral range, the
measured W1, the a-priori bound (:func:`hessnb.linalg.quadrature.wasserstein_bound`) and
the a-posteriori bound (:func:`hessnb.linalg.bounds.posterior_bound`, which divides by the
Ritz range, at most the exact range), both at 95 %.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bench.common import (
    CountingOperator,
    digits_batches,
    digits_cnn,
    fit,
    make_parser,
    markdown_table,
    spectral_errors,
    timed,
)
from hessnb import SLQSettings
from hessnb.hessian.operator import HessianOperator
from hessnb.linalg.bounds import posterior_bound
from hessnb.linalg.quadrature import wasserstein_bound
from hessnb.slq import CONFIDENCE, estimate

__all__ = ["WIDTHS", "RecordingOperator", "bound_rows", "main", "tridiagonal"]

#: Widths of the CPU benchmark's network with an exact spectrum (5,053 parameters).
WIDTHS = (4, 8, 9)
#: Widths and digits images of ``--quick`` (a 1,174-parameter network, 160 images).
QUICK_WIDTHS, QUICK_EXAMPLES = (2, 4, 4), 160


class RecordingOperator(CountingOperator):
    """A Hessian operator that keeps every block it is applied to, and the products.

    Attributes
    ----------
    inputs, outputs : list of torch.Tensor
        ``V`` and ``H V`` of each ``matmat`` call, float64 on the CPU, each ``(n, k)``.
    """

    def __init__(self, op: HessianOperator) -> None:
        super().__init__(op)
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V``, recorded."""
        out = super().matmat(vectors)
        self.inputs.append(vectors.detach().to("cpu", torch.float64).clone())
        self.outputs.append(out.detach().to("cpu", torch.float64).clone())
        return out


def tridiagonal(recorded: RecordingOperator, probe: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``alpha`` and ``beta`` (with the final residual norm) of one probe's Lanczos run.

    The recorded inputs are the orthonormal Lanczos vectors ``q_j`` and the outputs
    ``H q_j``; as in :func:`hessnb.linalg.lanczos_block`, ``alpha_j = q_j . H q_j`` and
    ``beta_j`` is the norm of ``H q_j`` after two Gram-Schmidt passes against
    ``q_0 .. q_j``. Needs a run without breakdown (every probe present in every call).

    Returns
    -------
    alpha, beta : array, shape (m,)
    """
    q = torch.stack([v[:, probe] for v in recorded.inputs])  # (m, n)
    hq = torch.stack([v[:, probe] for v in recorded.outputs])
    alpha = (q * hq).sum(dim=1)
    beta = torch.empty_like(alpha)
    for j in range(q.shape[0]):
        w = hq[j]
        for _ in range(2):
            w = w - q[: j + 1].T @ (q[: j + 1] @ w)
        beta[j] = w.norm()
    return alpha.numpy(), beta.numpy()


def bound_rows(
    op: HessianOperator, exact: np.ndarray, settings: SLQSettings, seeds: int
) -> list[tuple[int, float, float, float, float]]:
    """Per seed: ``(seed, W1 / range, a-priori bound, a-posteriori bound, Lanczos part)``.

    The Lanczos part (the deterministic quadrature term of the a-posteriori bound) is
    divided by the exact range, like the measured W1.
    """
    spread = float(exact.max() - exact.min())
    prior = wasserstein_bound(settings.lanczos_steps, settings.probes, op.n_params, CONFIDENCE)
    rows = []
    for seed in range(seeds):
        recorded = RecordingOperator(op)
        est = estimate(recorded, settings.replace(seed=seed))
        w1, _ = spectral_errors((est.nodes, est.weights), exact)
        runs = [tridiagonal(recorded, p) for p in range(settings.probes)]
        found = posterior_bound(
            np.stack([a for a, _ in runs]),
            np.stack([b for _, b in runs]),
            op.n_params,
            CONFIDENCE,
            lengths=est.lengths,
        )
        rows.append((seed, w1, prior, found.relative, found.lanczos / spread))
    return rows


def _parse(argv: Sequence[str] | None) -> Any:
    parser = make_parser("bench.bounds", __doc__)
    parser.add_argument("--quick", action="store_true", help="tiny network (a minute)")
    parser.add_argument("--seeds", type=int, default=8, help="probe seeds (8)")
    parser.add_argument("--steps", type=int, default=90, help="Lanczos steps (90)")
    parser.add_argument("--examples", type=int, help="first digits images used (all 1,797)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-seed table and the ratio of the means; returns 0."""
    args = _parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    widths, examples = (QUICK_WIDTHS, QUICK_EXAMPLES) if args.quick else (WIDTHS, None)
    examples = args.examples or examples
    batches = digits_batches(examples)
    small = digits_cnn(widths, seed=1)
    fit(small, batches)
    op = HessianOperator(small, F.cross_entropy, batches)
    steps = min(args.steps, op.n_params)
    settings = SLQSettings(lanczos_steps=steps, probes=1, top_k=1, deflate=False)
    dense = HessianOperator(small, F.cross_entropy, batches, dtype=torch.float64).dense()
    exact, seconds = timed(lambda: np.linalg.eigvalsh(dense.numpy()))
    print(
        f"{op.n_params:,}-parameter digits CNN, exact spectrum [{exact.min():.4g}, "
        f"{exact.max():.4g}] (eigvalsh {seconds:.0f} s); {settings.lanczos_steps} steps, "
        f"{settings.probes} probe, {args.seeds} seeds, {CONFIDENCE:.0%} confidence",
        file=sys.stderr,
        flush=True,
    )
    rows = bound_rows(op, exact, settings, args.seeds)
    mean = np.array([r[1:] for r in rows]).mean(axis=0)
    cells = [
        (str(s), f"{w1:.3g}", f"{prior:.3g}", f"{post:.3g}", f"{post / w1:.1f}", f"{lz:.2g}")
        for s, w1, prior, post, lz in rows
    ]
    cells.append(
        ("mean", *(f"{x:.3g}" for x in mean[:3]), f"{mean[2] / mean[0]:.1f}", f"{mean[3]:.2g}")
    )
    header = (
        "seed",
        "W1 / range",
        "a-priori bound",
        "a-posteriori bound",
        "a-posteriori / W1",
        "Lanczos part / range",
    )
    print(markdown_table(header, cells, "rrrrrr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
