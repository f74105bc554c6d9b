"""Easy / moderate / hard: how the model saw an item's label over the scoring window.

The categories compare an item's probabilities with the per-class confident thresholds ``t_k``
(:func:`lilaw_med.audit.rank.confident_thresholds`), the cells of the confident joint
(:mod:`lilaw_med.audit.counts`): **easy**, the most probable class reaching its threshold is the
given label; **hard**, it is another class (the joint's off-diagonal); **moderate**, no class
reaches its threshold. Why not the LiLAW terms: docs/audit.md (section 2).
"""

from __future__ import annotations

import warnings

import numpy as np

from lilaw_med.audit.rank import check_inputs, confident_thresholds

__all__ = ["DIFFICULTY_LEVELS", "difficulty", "lilaw_term_difficulty"]

DIFFICULTY_LEVELS = ("easy", "moderate", "hard")


def difficulty(labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Easy / moderate / hard per item (see the module docstring).

    Args:
        labels: int (N,) given labels.
        pred_probs: (N, C) probabilities over the scoring window.
        thresholds: (C,) confident thresholds; computed from ``labels`` and ``pred_probs`` when ``None``.

    Returns:
        str (N,) array of ``"easy"``, ``"moderate"``, ``"hard"``; ``""`` for an item without probabilities.

    Example::

        levels = difficulty(labels, pred_probs)                # (N,) of "easy", "moderate", "hard"
    """
    y, p = check_inputs(labels, pred_probs)
    t = confident_thresholds(y, p) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    ok = np.isfinite(p).all(axis=1)
    above = (p >= t[None, :] - 1e-9) & ok[:, None]
    confident = np.where(above, p, -np.inf).argmax(axis=1)
    has = above.any(axis=1)
    easy = has & (confident == y)
    hard = has & (confident != y)
    out = np.full(y.size, "moderate", dtype=object)
    out[easy] = "easy"
    out[hard] = "hard"
    out[~ok] = ""
    return out.astype(str)


def lilaw_term_difficulty(w_alpha: np.ndarray, w_beta: np.ndarray, w_delta: np.ndarray) -> np.ndarray:
    """The first definition, kept to compare against: which LiLAW term dominates on average.

    ``W_alpha`` "easy", ``W_delta`` "moderate", ``W_beta`` "hard", each averaged over the epochs.

    Args:
        w_alpha: (E, N) recorded ``W_alpha`` per epoch (NaN where not seen).
        w_beta: (E, N) ``W_beta``.
        w_delta: (E, N) ``W_delta``.

    Returns:
        str (N,) levels (``""`` for an item never seen).
    """

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        terms = np.stack([np.nanmean(np.asarray(t, dtype=np.float64), axis=0) for t in (w_alpha, w_delta, w_beta)])
    unseen = np.isnan(terms).any(axis=0)
    out = np.array(DIFFICULTY_LEVELS, dtype=object)[np.argmax(np.nan_to_num(terms, nan=-1.0), axis=0)]
    out[unseen] = ""
    return out.astype(str)
