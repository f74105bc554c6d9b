"""How many labels are wrong, per class, and which: the confident joint, in the manner of
``cleanlab.count`` and ``cleanlab.filter``.

Counting "the model disagrees with the label" counts the model's own errors as label noise, and
a weak model makes many. The confident joint
counts an item as "given i, truly j" only when the model is at least as confident in j as it
typically is for items labelled j (the per-class thresholds of
:func:`lilaw_med.audit.rank.confident_thresholds`), then calibrates each row to the class's
label count. Its off-diagonal share of row k estimates the share of wrong labels among the items
given class k. A bootstrap of the confident joint's cell counts gives the estimate's sampling
interval (:func:`estimate_noise`); :func:`combine_estimates` widens it by the spread over candidate
windows, and :func:`expected_precision` says how many of a set of flagged items are likely wrong
(:func:`wrong_label_chances`).

Pure functions over arrays (no I/O, no torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lilaw_med.audit.rank import check_inputs, confident_joint, confident_thresholds, order_label_issues

__all__ = [
    "NoiseEstimate", "combine_estimates", "confident_joint", "estimate_noise", "expected_precision", "find_label_issues",
    "wrong_label_chances",
]


def _cell_counts(labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """(C, C + 1) item counts: ``[i, j]`` items given i whose confident class is j, ``[i, C]`` given i
    that reach no threshold. The calibrated confident joint and the noise rates are functions of
    these counts alone (rows with NaN probabilities are left out)."""
    y, p = check_inputs(labels, pred_probs)
    c = p.shape[1]
    t = confident_thresholds(y, p) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1)
    if not ok.all():
        y, p = y[ok], p[ok]
    above = p >= t[None, :] - 1e-9
    guess = np.where(above.any(axis=1), np.where(above, p, -np.inf).argmax(axis=1), c)
    return np.bincount(y * (c + 1) + guess, minlength=c * (c + 1)).reshape(c, c + 1).astype(np.float64)


def _rates_from_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rates (..., C), counts (..., C))`` from cell counts (..., C, C + 1).

    Calibration rescales row i of the confident joint to the class's count, which leaves the row's
    off-diagonal SHARE unchanged: rate_i = 1 - C[i, i] / sum_j C[i, j] over the assigned items (0
    for a row with none).
    """
    c = cells.shape[-2]
    joint = cells[..., :c]
    rows = joint.sum(axis=-1)
    diag = np.diagonal(joint, axis1=-2, axis2=-1)
    rates = np.where(rows > 0, 1 - diag / np.maximum(rows, 1e-12), 0.0)
    return rates, cells.sum(axis=-1)


@dataclass(frozen=True)
class NoiseEstimate:
    """Estimated shares of wrong labels, without clean labels.

    Attributes:
        per_class: (C,) share of wrong labels among the items given each class.
        per_class_interval: (C, 2) its interval (lower, upper).
        overall: the share over all items.
        overall_interval: (lower, upper).
        counts: (C,) number of items given each class.
        confidence: the interval's level (e.g. 0.95).
        sampling_interval: (lower, upper) of ``overall`` from the count bootstrap alone, before
            :func:`combine_estimates` widened it (equal to ``overall_interval`` until then).
    """

    per_class: np.ndarray
    per_class_interval: np.ndarray
    overall: float
    overall_interval: tuple[float, float]
    counts: np.ndarray
    confidence: float
    sampling_interval: tuple[float, float] | None = None

    @property
    def n_wrong(self) -> np.ndarray:
        """(C,) estimated numbers of wrong labels per given class, rounded."""
        return np.rint(self.per_class * self.counts).astype(np.int64)


def estimate_noise(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    thresholds: np.ndarray | None = None,
) -> NoiseEstimate:
    """Per-class and overall noise rates from the calibrated confident joint, with intervals.

    The interval is a bootstrap of the items, drawn on the confident joint's cell counts: with the
    per-class thresholds held at their full-data values each item falls in one cell (given label i,
    confident class j or none), so the cell counts of a resample of the N items are
    Multinomial(N, observed cell shares), and the rates are functions of the cell counts alone.
    Drawing the C(C + 1) counts is therefore the item bootstrap exactly, at O(C^2) per resample
    instead of O(N C). What it holds fixed is the thresholds (class means over the items given each
    class; their own sampling error shrinks as 1/sqrt(n_k)). The interval says nothing about the
    choice of epochs or the model's own errors: :func:`combine_estimates` adds the first.

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) probabilities (out-of-sample or from the scoring window).
        n_bootstrap: resamples for the interval (0: no interval, the interval is then the point estimate).
        confidence: the interval's level.
        seed: the bootstrap's seed (the estimate is deterministic).
        thresholds: (C,) per-class thresholds to use instead of the items' own.

    Returns:
        The :class:`NoiseEstimate`.

    Example::

        est = estimate_noise(labels, pred_probs)             # labels (N,), pred_probs (N, C)
        est.overall, est.overall_interval, est.n_wrong       # share wrong, 95% interval, per-class counts
    """
    cells = _cell_counts(labels, pred_probs, thresholds)
    rates, counts = _rates_from_cells(cells)
    n = float(counts.sum())
    overall = float((rates * counts).sum() / max(n, 1))
    if n_bootstrap <= 0 or n < 2:
        return NoiseEstimate(rates, np.stack([rates, rates], axis=1), overall, (overall, overall), counts, confidence,
                             (overall, overall))
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(n), cells.ravel() / n, size=n_bootstrap).reshape(n_bootstrap, *cells.shape)
    boot_rates, boot_counts = _rates_from_cells(draws.astype(np.float64))
    boot = np.where(boot_counts > 0, boot_rates, np.nan)
    boot_overall = (boot_rates * boot_counts).sum(axis=1) / np.maximum(boot_counts.sum(axis=1), 1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    with warnings.catch_warnings():  # a class no resample holds: "All-NaN slice" (replaced below)
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = np.stack([np.nanpercentile(boot, lo, axis=0), np.nanpercentile(boot, hi, axis=0)], axis=1)
    interval = np.where(np.isfinite(interval), interval, rates[:, None])
    overall_interval = (float(np.percentile(boot_overall, lo)), float(np.percentile(boot_overall, hi)))
    return NoiseEstimate(rates, interval, overall, overall_interval, counts, confidence, overall_interval)


def combine_estimates(main: NoiseEstimate, others: Sequence[NoiseEstimate]) -> NoiseEstimate:
    """``main``'s estimate with an interval that also carries the choice of window.

    The interval becomes the envelope of every estimate's sampling interval: from the lowest lower
    bound to the highest upper bound over ``main`` and ``others`` (the estimates of the other
    candidate windows). Where the candidates agree it is the sampling interval; where the count
    depends on which epochs are read it spans them all.

    Args:
        main: the estimate whose point values are kept (the shipped count window's).
        others: estimates of the same items from other windows.

    Returns:
        A :class:`NoiseEstimate` with the widened intervals (``sampling_interval`` stays ``main``'s).

    Example::

        est = combine_estimates(estimate_noise(labels, probs_a), [estimate_noise(labels, probs_b)])
    """
    every = [main, *others]
    per_lo = np.min([e.per_class_interval[:, 0] for e in every], axis=0)
    per_hi = np.max([e.per_class_interval[:, 1] for e in every], axis=0)
    overall = (min(e.overall_interval[0] for e in every), max(e.overall_interval[1] for e in every))
    return replace(main, per_class_interval=np.stack([per_lo, per_hi], axis=1), overall_interval=overall,
                   sampling_interval=main.sampling_interval or main.overall_interval)


def wrong_label_chances(labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Each item's chance of a wrong label as the calibrated confident joint sees it.

    1 for an item confidently another class than its given one (an off-diagonal cell), 0 for one
    confidently its given class, and its class's estimated rate for one that reaches no threshold
    (or has no probabilities): calibration spreads those over the row in the proportions of the
    counted ones. Summed over the items given class k (with probabilities) the chances are the
    estimated number of wrong labels of class k, ``rate_k * n_k``.

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) the probabilities the noise estimate reads (NaN rows allowed).
        thresholds: (C,) per-class thresholds to use instead of the items' own.

    Returns:
        float64 (N,) in [0, 1].

    Example::

        chances = wrong_label_chances(labels, pred_probs)      # (N,) in [0, 1]
    """
    y, p = check_inputs(labels, pred_probs)
    t = confident_thresholds(y, p) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1)
    above = (p >= t[None, :] - 1e-9) & ok[:, None]
    has = above.any(axis=1)
    guess = np.where(above, p, -np.inf).argmax(axis=1)
    rates, _ = _rates_from_cells(_cell_counts(y, p, t))
    return np.where(has, (guess != y).astype(np.float64), rates[y])


def expected_precision(chances: np.ndarray, flagged: np.ndarray) -> float:
    """The expected share of wrong labels among the flagged items: the mean of their chances
    (:func:`wrong_label_chances`); NaN when nothing is flagged.

    It is the noise estimate's own view of the flagged set: as good as the count, and optimistic
    where the network is confidently wrong about an item whose label is right.

    Example::

        expected_precision(wrong_label_chances(labels, pred_probs), is_label_issue)  # e.g. 0.7
    """
    f = np.asarray(flagged, dtype=bool)
    return float(np.asarray(chances, dtype=np.float64)[f].mean()) if f.any() else float("nan")


def find_label_issues(
    label_quality: np.ndarray,
    labels: np.ndarray,
    n_per_class: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Flags the ``n_per_class[k]`` lowest-scored items given each class k (cleanlab's ``prune_by_class``).

    Thresholds are per class because classes differ in size, noise and difficulty.

    Args:
        label_quality: (N,) scores, lower = more likely wrong (NaN items are never flagged).
        labels: int (N,) given labels.
        n_per_class: (C,) how many to flag per given class (e.g. :attr:`NoiseEstimate.n_wrong`).

    Returns:
        ``(is_label_issue bool (N,), thresholds (C,))``, a threshold being the score of the last
        item flagged in its class (NaN where none is).

    Example::

        scores = get_label_quality_scores(labels, pred_probs)
        flags, thresholds = find_label_issues(scores, labels, estimate_noise(labels, pred_probs).n_wrong)
    """
    q = np.asarray(label_quality, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if q.shape != y.shape or q.ndim != 1:
        raise ValueError(f"label_quality and labels must both be (N,) but are {q.shape} and {y.shape}.")
    n_flag = np.asarray(n_per_class, dtype=np.int64)
    flags = np.zeros(q.shape, dtype=bool)
    thresholds = np.full(n_flag.size, np.nan)
    for k in range(n_flag.size):
        members = np.nonzero((y == k) & np.isfinite(q))[0]
        n = int(min(max(n_flag[k], 0), members.size))
        if n == 0:
            continue
        chosen = members[order_label_issues(q[members])[:n]]
        flags[chosen] = True
        thresholds[k] = float(q[chosen].max())
    return flags, thresholds
