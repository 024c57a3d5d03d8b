"""Verdicts on the paper's findings, computed from runs with stated thresholds.

Each function takes run datasets (``hessnb.open_run``) and returns a :class:`Verdict`:
whether the finding holds at the scale that was run, and a sentence with the numbers and
the threshold it was judged by. Isolation is judged *within* each spectrum
(``outlier_gap`` = top eigenvalue / bulk edge, ``n_outliers``), never by comparing the top
eigenvalue of one network with another's (batch-norm networks are scale-invariant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = [
    "Verdict",
    "bn_modes",
    "evaluate",
    "gradient_concentration",
    "isolation",
    "lr_drop",
    "negative_eigenvalues",
    "population_statistics",
]


@dataclass(frozen=True)
class Verdict:
    """A finding, whether it holds in the run, and the sentence that says why."""

    experiment: str
    holds: bool
    text: str

    def __str__(self) -> str:
        mark = "REPRODUCED" if self.holds else "NOT REPRODUCED"
        return f"[{self.experiment}] {mark}: {self.text}"


def _later_half(run: xr.Dataset, name: str) -> np.ndarray:
    """Values of ``name`` over the recorded steps in the second half of training."""
    values = run[name].dropna("step")
    steps = values["step"].values
    return values.sel(step=steps[steps >= steps.max() / 2]).values


def isolation(plain: xr.Dataset, normed: xr.Dataset, threshold: float = 2.0) -> Verdict:
    """E1: outliers isolated from the bulk without BN, almost absent with BN (train mode).

    Holds when the median ``outlier_gap`` over the second half of training is at least
    ``threshold`` times larger without BN than with BN.
    """
    a, b = (
        np.median(_later_half(plain, "outlier_gap")),
        np.median(_later_half(normed, "outlier_gap")),
    )
    n_a = np.median(_later_half(plain, "n_outliers"))
    n_b = np.median(_later_half(normed, "n_outliers"))
    ratio = a / b
    return Verdict(
        "E1 isolation",
        bool(ratio >= threshold),
        f"over the second half of training the top eigenvalue stands a median {a:.3g}x above "
        f"the bulk edge without BN ({n_a:.0f} isolated eigenvalues) and {b:.3g}x with BN "
        f"({n_b:.0f}); ratio {ratio:.2g} against the threshold {threshold:g}.",
    )


def gradient_concentration(
    plain: xr.Dataset, normed: xr.Dataset, level: float = 0.8, margin: float = 0.1
) -> Verdict:
    """E1: the gradient concentrates in the top eigenspace without BN, less with BN.

    Holds when the mean ``grad_fraction`` over the second half of training is at least
    ``level`` without BN and exceeds the BN one by at least ``margin``.
    """
    a, b = (
        float(np.mean(_later_half(plain, "grad_fraction"))),
        float(np.mean(_later_half(normed, "grad_fraction"))),
    )
    holds = a >= level and a - b >= margin
    return Verdict(
        "E1 gradient",
        bool(holds),
        f"mean share of |g|^2 in the top-{plain.sizes['k']} eigenspace over the second half: "
        f"{a:.2f} without BN, {b:.2f} with BN (needs >= {level:g} without BN and a lead of "
        f">= {margin:g}).",
    )


def negative_eigenvalues(
    run: xr.Dataset, window: int = 20, ratio_at_start: float = 0.3, drop: float = 3.0
) -> Verdict:
    """E2: large negative eigenvalues at initialisation disappear early in training.

    Uses ``|lambda_min| / lambda_1``. Holds when it is at least ``ratio_at_start`` at step 0
    and falls at least ``drop``-fold by the last record within the first ``window`` steps.
    """
    rel = np.abs(run["lambda_min"]) / run["top_eigenvalues"].isel(k=0)
    rel = rel.dropna("step")
    early = rel.sel(step=rel["step"] <= window)
    start, end = float(early.isel(step=0)), float(early.isel(step=-1))
    mass0 = float(run["negative_mass"].sel(step=early["step"][0]))
    mass1 = float(run["negative_mass"].sel(step=early["step"][-1]))
    holds = start >= ratio_at_start and start / max(end, 1e-300) >= drop
    return Verdict(
        "E2 negative eigenvalues",
        bool(holds),
        f"|lambda_min| / lambda_1 is {start:.2f} at step {int(early.step[0])} and {end:.2f} at "
        f"step {int(early.step[-1])} (needs >= {ratio_at_start:g} at the start and a "
        f"{drop:g}-fold fall); negative mass {mass0:.3f} -> {mass1:.3f}.",
    )


def lr_drop(run: xr.Dataset, drop_step: int, after: int = 5, factor: float = 1.5) -> Verdict:
    """E3: the spectrum changes abruptly at a learning-rate drop.

    Compares ``lambda_1`` at the drop (the last record before any update at the new rate)
    with ``after`` steps later, and the same span before the drop. Holds when the change
    across the drop is at least ``factor``-fold and at least twice the change before it.
    """
    top = run["top_eigenvalues"].isel(k=0).dropna("step")
    steps = top["step"].values

    def at(step: int) -> float:
        return float(top.sel(step=steps[np.argmin(np.abs(steps - step))]))

    before, at_drop, later = at(drop_step - after), at(drop_step), at(drop_step + after)
    across = max(later / at_drop, at_drop / later)
    earlier = max(at_drop / before, before / at_drop)
    holds = across >= factor and across >= 2 * earlier
    return Verdict(
        "E3 learning-rate drop",
        bool(holds),
        f"lambda_1 is {before:.3g} at step {drop_step - after}, {at_drop:.3g} at the drop (step "
        f"{drop_step}) and {later:.3g} at step {drop_step + after}: a {across:.2g}-fold change "
        f"across the drop against {earlier:.2g}-fold before it (needs >= {factor:g} and twice "
        "the change before).",
    )


def bn_modes(train_mode: xr.Dataset, eval_mode: xr.Dataset, threshold: float = 2.0) -> Verdict:
    """E4: the BN network's Hessian with population statistics brings the outliers back.

    Same checkpoints, Hessian in BN train mode vs eval mode. Holds when the median
    ``outlier_gap`` over the second half of training is at least ``threshold`` times larger
    in eval mode.
    """
    a = np.median(_later_half(eval_mode, "outlier_gap"))
    b = np.median(_later_half(train_mode, "outlier_gap"))
    return Verdict(
        "E4 batch vs population statistics",
        bool(a / b >= threshold),
        f"on the same checkpoints the median outlier_gap is {a:.3g} with population "
        f"statistics and {b:.3g} with batch statistics; ratio {a / b:.2g} against the "
        f"threshold {threshold:g}.",
    )


def population_statistics(
    normed: xr.Dataset, population: xr.Dataset, threshold: float = 2.0
) -> Verdict:
    """E5: training with population-statistics BN brings the outliers back and is slower.

    Holds when the median ``outlier_gap`` over the second half is at least ``threshold``
    times the BN one *and* the final full-dataset loss is higher.
    """
    a = np.median(_later_half(population, "outlier_gap"))
    b = np.median(_later_half(normed, "outlier_gap"))
    loss_a = float(population["loss"].dropna("step").isel(step=-1))
    loss_b = float(normed["loss"].dropna("step").isel(step=-1))
    holds = a / b >= threshold and loss_a > loss_b
    return Verdict(
        "E5 population statistics in training",
        bool(holds),
        f"median outlier_gap {a:.3g} (population statistics) vs {b:.3g} (batch statistics), "
        f"ratio {a / b:.2g} against the threshold {threshold:g}; final loss {loss_a:.3f} vs "
        f"{loss_b:.3f} ({'slower' if loss_a > loss_b else 'not slower'} with population "
        "statistics).",
    )


def evaluate(runs: dict[str, xr.Dataset]) -> list[Verdict]:
    """Every verdict for the runs of :func:`hessnb.reference.experiments.run_experiments`.

    Parameters
    ----------
    runs : dict
        ``"no-bn"``, ``"bn"``, ``"bn-eval"``, ``"bn-population"`` -> run dataset; the
        learning-rate drop is read from the runs' ``lr_drop`` attribute.
    """
    drop = int(runs["no-bn"].attrs["lr_drop"])
    return [
        isolation(runs["no-bn"], runs["bn"]),
        gradient_concentration(runs["no-bn"], runs["bn"]),
        negative_eigenvalues(runs["bn"]),
        lr_drop(runs["no-bn"], drop),
        bn_modes(runs["bn"], runs["bn-eval"]),
        population_statistics(runs["bn"], runs["bn-population"]),
    ]
