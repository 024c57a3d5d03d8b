"""``SLQSettings``: the estimator's settings, validated once and carried as one value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from hessnb.validation import check_positive_int

__all__ = ["SLQSettings"]


@dataclass(frozen=True)
class SLQSettings:
    """Settings of stochastic Lanczos quadrature.

    Parameters
    ----------
    lanczos_steps : int
        Lanczos steps ``m`` per probe (float64, full re-orthogonalisation); at most the
        operator's dimension.
    probes : int
        Gaussian start vectors ``P``, run in lockstep (one pass over the data per step).
    top_k : int
        Top Ritz values (and residuals, and, when tracking, vectors) kept; at most
        ``lanczos_steps``.
    seed : int
        Seed of the probe vectors: the same seed gives the same probes at every step.
    deflate : bool
        Deflated SLQ (:mod:`hessnb.linalg.deflation`): top Ritz pairs that converged
        (residual below ``1e-6`` of the largest Ritz value) count as eigenvalues of weight
        ``1 / n`` and the probes estimate the rest. It costs no extra operator products;
        a probe with nothing converged keeps its plain weights.

    Examples
    --------
    >>> SLQSettings(lanczos_steps=30, top_k=5).for_dimension(100).lanczos_steps
    30
    """

    lanczos_steps: int = 90
    probes: int = 1
    top_k: int = 10
    seed: int = 0
    deflate: bool = True

    def __post_init__(self) -> None:
        check_positive_int("lanczos_steps", self.lanczos_steps)
        check_positive_int("probes", self.probes)
        check_positive_int("top_k", self.top_k)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")
        if not isinstance(self.deflate, bool):
            raise TypeError(f"deflate must be True or False, got {self.deflate!r}")
        if self.top_k > self.lanczos_steps:
            raise ValueError(
                f"top_k={self.top_k} exceeds lanczos_steps={self.lanczos_steps}: Lanczos "
                "gives at most one Ritz value per step; lower top_k or raise lanczos_steps"
            )

    @classmethod
    def resolve(cls, settings: SLQSettings | None, **keywords: Any) -> SLQSettings:
        """``settings``, or the settings of the keywords (``spectrum`` and ``Tracker``).

        Raises
        ------
        ValueError
            When both are given (keywords other than their defaults).
        """
        chosen = cls(**keywords)
        if settings is None:
            return chosen
        if chosen != cls():
            raise ValueError(
                "pass either settings=SLQSettings(...) or the keywords lanczos_steps, probes, "
                "seed, top_k and deflate, not both"
            )
        return settings

    def for_dimension(self, dim: int) -> SLQSettings:
        """These settings, checked against an operator of dimension ``dim``.

        Raises
        ------
        ValueError
            If ``lanczos_steps`` exceeds ``dim`` (a Krylov space has at most ``dim``
            dimensions).
        """
        if self.lanczos_steps > dim:
            raise ValueError(
                f"lanczos_steps ({self.lanczos_steps}) cannot exceed the operator dimension "
                f"({dim}, the number of parameters): a Krylov space has at most {dim} "
                f"dimensions; pass lanczos_steps <= {dim}"
            )
        return self

    def replace(self, **changes: Any) -> SLQSettings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def as_attrs(self) -> dict[str, int]:
        """The settings as dataset attributes (``deflate`` as 0 or 1: netCDF has no bool)."""
        return {key: int(value) for key, value in asdict(self).items()}
