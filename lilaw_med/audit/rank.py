"""Label quality scores from class probabilities, in the manner of ``cleanlab.rank``.

Pure functions over arrays (no I/O, no torch). Conventions as in cleanlab:

* ``labels``: int (N,) given (possibly wrong) labels in ``[0, C)``;
* ``pred_probs``: float (N, C) class probabilities whose rows sum to 1 (here: an item's
  probabilities averaged over the run's scoring window, see :mod:`lilaw_med.audit.window`, or
  out-of-fold probabilities from :mod:`lilaw_med.workflows.crossfit`, or both averaged);
* a label quality score lies in [0, 1]; LOWER means the given label is MORE likely wrong.

The methods are named and swappable by ``method=`` (:data:`SCORE_METHODS`, a name -> function
table: adding a score is one entry).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lilaw_med.errors import InputError

__all__ = [
    "SCORE_METHODS",
    "check_inputs",
    "confident_joint",
    "confident_thresholds",
    "get_label_quality_scores",
    "normalized_margin",
    "order_label_issues",
    "posterior",
    "self_confidence",
    "subtract_confident_thresholds",
]


def check_inputs(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates ``labels`` (N,) and ``pred_probs`` (N, C) and returns them as int64 / float64.

    Raises:
        ValueError: on mismatched shapes, labels out of ``[0, C)`` or non-integer labels.
    """
    y = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"labels must be (N,) and pred_probs (N, C) but are {y.shape} and {p.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices but have dtype {y.dtype}.")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}] but range over [{y.min()}, {y.max()}].")
    return y.astype(np.int64), p


def confident_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-class thresholds ``t_k``: the mean probability of class k over the items GIVEN label k.

    The model's typical confidence in a class when the label says it; an item whose probability
    of class j reaches ``t_j`` is confidently "j" (cleanlab's ``get_confident_thresholds``).

    Args:
        labels: int (N,).
        pred_probs: (N, C); rows with NaN are ignored.

    Returns:
        float64 (C,); 1.0 for a class no item is given (nothing reaches it).

    Example::

        t = confident_thresholds(labels, pred_probs)           # (C,): mean p[k] over the items labelled k
    """
    y, p = check_inputs(labels, pred_probs)
    ok = np.isfinite(p).all(axis=1)
    out = np.ones(p.shape[1])
    for k in range(p.shape[1]):
        members = ok & (y == k)
        if members.any():
            out[k] = p[members, k].mean()
    return out


def subtract_confident_thresholds(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Probabilities with each class's confident threshold subtracted, shifted and renormalised.

    A network trained on class-conditional noise (say, 30% of grade 1 labelled grade 2) learns to
    put some probability on the class a label is often flipped to; subtracting ``t_k`` removes
    that class-wise bias before items are compared across classes (cleanlab's
    ``adjust_pred_probs``).

    Returns:
        float64 (N, C), rows summing to 1 (NaN rows stay NaN).
    """
    _, p = check_inputs(labels, pred_probs)
    t = confident_thresholds(labels, pred_probs)
    adj = p - t[None, :] + t.max()
    return adj / adj.sum(axis=1, keepdims=True)


def self_confidence(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """``p[y]``: the probability of the given label."""
    y, p = check_inputs(labels, pred_probs)
    return p[np.arange(y.size), y]


def normalized_margin(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """``(p[y] - max_{k != y} p[k] + 1) / 2``: how far the given label leads the best other class."""
    y, p = check_inputs(labels, pred_probs)
    rows = np.arange(y.size)
    given = p[rows, y]
    other = p.copy()
    other[rows, y] = -np.inf
    return (given - other.max(axis=1) + 1) / 2


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

    Example::

        joint = confident_joint(labels, pred_probs)            # (C, C): given i (rows), truly j (columns)
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


def posterior(labels: np.ndarray, pred_probs: np.ndarray, prior_count: float = 1.0) -> np.ndarray:
    """``P(true = y | x, given = y)`` by Bayes: the probabilities as the prior over the true class, and
    the noise transitions that their calibrated confident joint implies as the likelihood.

    ``P(given = y | true = j) = C[y, j] / sum_i C[i, j]`` (each cell plus ``prior_count``, so a
    transition no item showed stays possible). Under symmetric noise every off-diagonal transition
    is alike and the score orders the items of a class as ``p[y]`` does; a systematic flip
    ``j -> y`` makes ``C[y, j]`` large, so an item labelled ``y`` that the network finds likely to
    be ``j`` scores low even where the network has learned part of the flip and ``p[y]`` is high.

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) probabilities.
        prior_count: added to every cell of the confident joint.

    Returns:
        (N,) the posterior probability of the given label (NaN rows stay NaN).

    Raises:
        InputError: on malformed inputs or a ``prior_count`` that is not positive.

    Example::

        scores = posterior(labels, pred_probs)   # lower = the given label more likely wrong
    """
    if not prior_count > 0:
        raise InputError(f"prior_count must be > 0 but is {prior_count}.")
    y, p = check_inputs(labels, pred_probs)
    joint = confident_joint(y, p) + prior_count
    likelihood = joint / joint.sum(axis=0, keepdims=True)  # [i, j]: P(given = i | true = j)
    rows = np.arange(y.size)
    evidence = (p * likelihood[y, :]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return p[rows, y] * likelihood[y, y] / evidence


SCORE_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "self_confidence": self_confidence,
    "normalized_margin": normalized_margin,
    "posterior": posterior,
}
"""Named label quality scores over (labels, pred_probs)."""


def get_label_quality_scores(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    method: str = "self_confidence",
    adjust_pred_probs: bool = False,
) -> np.ndarray:
    """A label quality score per item (like ``cleanlab.rank.get_label_quality_scores``).

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) class probabilities.
        method: a key of :data:`SCORE_METHODS` (default cleanlab's; the audit's own default is
            :data:`lilaw_med.audit.core.DEFAULT_METHOD`).
        adjust_pred_probs: subtract the per-class confident thresholds first
            (:func:`subtract_confident_thresholds`).

    Returns:
        float64 (N,) in [0, 1], lower = more likely mislabeled; NaN for an item without probabilities.

    Raises:
        ValueError: on an unknown method or malformed inputs.

    Example::

        scores = get_label_quality_scores(labels, pred_probs, method="normalized_margin")  # (N,), low = suspect
    """
    if method not in SCORE_METHODS:
        raise InputError(f"method must be one of {sorted(SCORE_METHODS)} but is {method!r}.")
    y, p = check_inputs(labels, pred_probs)
    if adjust_pred_probs:
        p = subtract_confident_thresholds(y, p)
    return np.clip(SCORE_METHODS[method](y, p), 0.0, 1.0)


def order_label_issues(label_quality: np.ndarray) -> np.ndarray:
    """Indices from the most to the least likely label issue (lowest score first; NaN last).

    Args:
        label_quality: (N,) scores.

    Returns:
        int64 (N,) indices.

    Example::

        rank = order_label_issues(scores)                      # (N,): 1 for the most suspect item
    """
    q = np.asarray(label_quality, dtype=np.float64)
    return np.argsort(np.where(np.isnan(q), np.inf, q), kind="stable")
