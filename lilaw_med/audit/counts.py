"""How many labels are wrong, per class, and which: the confident joint, in the manner of
``cleanlab.count`` and ``cleanlab.filter``.

Counting "the model disagrees with the label" counts the model's own errors as label noise, and
a weak model makes many (the first audit estimated 0.83 for a true 0.23). The confident joint
counts an item as "given i, truly j" only when the model is at least as confident in j as it
typically is for items labelled j (the per-class thresholds of
:func:`lilaw_med.audit.rank.confident_thresholds`), then calibrates each row to the class's
label count. Its off-diagonal share of row k estimates the share of wrong labels among the items
given class k. A bootstrap over items gives the estimate's interval.

Pure functions over arrays (no I/O, no torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lilaw_med.audit.rank import check_inputs, confident_thresholds, order_label_issues

__all__ = ["NoiseEstimate", "confident_joint", "estimate_noise", "find_label_issues"]


def confident_joint(
    labels: np.ndarray, pred_probs: np.ndarray, calibrate: bool = True, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """The confident joint ``C[i, j]``: items given label i whose confident class is j.

    An item's confident class is the most probable class among those whose probability reaches
    that class's threshold; an item that reaches none is not counted. With ``calibrate``, each row
    is rescaled to the number of items given that label (rows of empty classes stay 0), so the
    matrix sums to N (cleanlab's ``calibrate_confident_joint``).

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) probabilities (NaN rows are left out).
        calibrate: rescale rows to the label counts.
        thresholds: (C,) per-class thresholds to use instead of those of ``labels`` and ``pred_probs``
            (e.g. from out-of-sample items).

    Returns:
        float64 (C, C).
    """
    y, p = check_inputs(labels, pred_probs)
    c = p.shape[1]
    t = confident_thresholds(y, p) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1)
    above = (p >= t[None, :] - 1e-9) & ok[:, None]
    has = above.any(axis=1)
    guess = np.where(above, p, -np.inf).argmax(axis=1)
    joint = np.zeros((c, c))
    np.add.at(joint, (y[has], guess[has]), 1.0)
    if calibrate:
        counts = np.bincount(y[ok], minlength=c).astype(np.float64)
        row = joint.sum(axis=1, keepdims=True)
        joint = np.where(row > 0, joint / np.maximum(row, 1e-12) * counts[:, None], 0.0)
    return joint


def _rates(labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    joint = confident_joint(labels, pred_probs, thresholds=thresholds)
    rows = joint.sum(axis=1)
    return np.where(rows > 0, 1 - np.diag(joint) / np.maximum(rows, 1e-12), 0.0)


@dataclass(frozen=True)
class NoiseEstimate:
    """Estimated shares of wrong labels, without clean labels.

    Attributes:
        per_class: (C,) share of wrong labels among the items given each class.
        per_class_interval: (C, 2) its bootstrap interval (lower, upper).
        overall: the share over all items.
        overall_interval: (lower, upper).
        counts: (C,) number of items given each class.
        confidence: the interval's level (e.g. 0.95).
    """

    per_class: np.ndarray
    per_class_interval: np.ndarray
    overall: float
    overall_interval: tuple[float, float]
    counts: np.ndarray
    confidence: float

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

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) probabilities (out-of-sample or from the scoring window).
        n_bootstrap: bootstrap resamples of the items for the interval (0: no interval, the
            interval is then the point estimate).
        confidence: the interval's level.
        seed: the bootstrap's seed (the estimate is deterministic).
        thresholds: (C,) per-class thresholds to use instead of the items' own (kept fixed in the bootstrap).

    Returns:
        The :class:`NoiseEstimate`.
    """
    y, p = check_inputs(labels, pred_probs)
    ok = np.isfinite(p).all(axis=1)
    y, p = y[ok], p[ok]
    c = p.shape[1]
    counts = np.bincount(y, minlength=c).astype(np.float64)
    rates = _rates(y, p, thresholds)
    overall = float((rates * counts).sum() / max(counts.sum(), 1))
    if n_bootstrap <= 0 or y.size < 2:
        return NoiseEstimate(rates, np.stack([rates, rates], axis=1), overall, (overall, overall), counts, confidence)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_bootstrap, c))
    boot_overall = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        idx = rng.integers(0, y.size, y.size)
        r = _rates(y[idx], p[idx], thresholds)
        n = np.bincount(y[idx], minlength=c)
        boot[b] = np.where(n > 0, r, np.nan)
        boot_overall[b] = (r * n).sum() / max(n.sum(), 1)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    with warnings.catch_warnings():  # a class no resample holds: "All-NaN slice" (replaced below)
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = np.stack([np.nanpercentile(boot, lo, axis=0), np.nanpercentile(boot, hi, axis=0)], axis=1)
    interval = np.where(np.isfinite(interval), interval, rates[:, None])
    return NoiseEstimate(
        rates, interval, overall,
        (float(np.percentile(boot_overall, lo)), float(np.percentile(boot_overall, hi))), counts, confidence,
    )


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
