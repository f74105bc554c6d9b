"""Detection quality of a label-issue score when the true labels are known (scikit-learn).

A label quality score is LOWER for a likely wrong label (see :mod:`lilaw_med.audit.rank`), so
the detection score is its negation. Used by ``lilaw-med audit`` when a noise sidecar gives the
true labels, and by the benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

__all__ = ["detection_curves", "detection_quality", "precision_at_k"]


def _check(label_quality: np.ndarray, is_mislabeled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(label_quality, dtype=np.float64).reshape(-1)
    t = np.asarray(is_mislabeled).reshape(-1)
    if q.shape != t.shape:
        raise ValueError(
            f"label_quality and is_mislabeled must have the same length but have {q.size} and {t.size} items."
        )
    if t.dtype != bool:
        if not np.isin(t, (0, 1)).all():
            raise ValueError("is_mislabeled must be boolean (or 0/1).")
        t = t.astype(bool)
    keep = np.isfinite(q)
    return q[keep], t[keep]


def precision_at_k(label_quality: np.ndarray, is_mislabeled: np.ndarray, k: int) -> float:
    """Share of truly wrong labels among the ``k`` lowest-scored items (ties: the earlier item first).

    Args:
        label_quality: (N,) scores, lower = more likely wrong.
        is_mislabeled: bool (N,) truth.
        k: how many items to take.

    Returns:
        The precision in [0, 1]; NaN when ``k`` is 0.
    """
    q, t = _check(label_quality, is_mislabeled)
    k = min(int(k), q.size)
    if k <= 0:
        return math.nan
    order = np.argsort(q, kind="stable")[:k]
    return float(t[order].mean())


def detection_quality(label_quality: np.ndarray, is_mislabeled: np.ndarray) -> dict[str, float]:
    """AUROC, average precision and precision at the true noise count of a label-issue score.

    Args:
        label_quality: (N,) scores, lower = more likely wrong; NaN items are left out.
        is_mislabeled: bool (N,): whether the given label differs from the true one.

    Returns:
        ``{"auroc", "average_precision", "precision_at_noise_count", "n_items", "n_mislabeled",
        "noise_rate"}``; the ranking figures are NaN when only one kind of item is present.
    """
    q, t = _check(label_quality, is_mislabeled)
    n_bad = int(t.sum())
    out: dict[str, float] = {"n_items": int(q.size), "n_mislabeled": n_bad,
                             "noise_rate": float(n_bad / q.size) if q.size else math.nan}
    if 0 < n_bad < q.size:
        out["auroc"] = float(roc_auc_score(t, -q))
        out["average_precision"] = float(average_precision_score(t, -q))
        out["precision_at_noise_count"] = precision_at_k(q, t, n_bad)
    else:
        out.update(auroc=math.nan, average_precision=math.nan, precision_at_noise_count=math.nan)
    return out


def detection_curves(label_quality: np.ndarray, is_mislabeled: np.ndarray) -> dict[str, np.ndarray]:
    """ROC and precision-recall curves of a label-issue score.

    Args:
        label_quality: (N,) scores, lower = more likely wrong.
        is_mislabeled: bool (N,) truth (both kinds must be present).

    Returns:
        ``{"fpr", "tpr", "precision", "recall"}`` arrays.

    Raises:
        ValueError: when only one kind of item is present.
    """
    q, t = _check(label_quality, is_mislabeled)
    if t.all() or not t.any():
        raise ValueError("detection curves need both mislabeled and correctly labelled items.")
    fpr, tpr, _ = roc_curve(t, -q)
    precision, recall, _ = precision_recall_curve(t, -q)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
