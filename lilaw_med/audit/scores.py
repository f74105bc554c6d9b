"""Label-issue scores from training dynamics: pure functions over arrays, in the manner of
``cleanlab.rank`` / ``cleanlab.filter`` (no I/O, no torch, no MONAI).

Conventions (as in cleanlab):

* a **label quality score** lies in [0, 1]; LOWER means the given label is MORE likely wrong;
* ``labels`` are the given (possibly noisy) integer labels, shape (N,);
* the dynamics are a mapping of field name -> array of shape (E, N) (epochs x items), as written by
  :class:`lilaw_med.handlers.DynamicsRecorder` and read by :func:`lilaw_med.handlers.dynamics.load_dynamics`:
  ``prob_label`` (s[y]), ``prob_max`` (max s), ``prob_other`` (largest probability of a class other
  than y), ``pred_label``, ``w_alpha``, ``w_beta``, ``w_delta``, ``weight``, ``loss``. An epoch in
  which an item was not seen is NaN and is ignored. Multi-label dynamics (E, N, L) give one score
  per (item, label): ``(N, L)``.

The scoring methods are named and swappable by ``method=`` (see :data:`SCORE_METHODS`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_EPOCH_FRACTION",
    "DEFAULT_METHOD",
    "DEFAULT_NOISE_RATE_METHOD",
    "DEFAULT_RULE",
    "DIFFICULTY_LEVELS",
    "ISSUE_RULES",
    "NOISE_RATE_METHODS",
    "SCORE_METHODS",
    "consensus_prediction",
    "difficulty",
    "early_epochs",
    "estimate_noise_rate",
    "find_label_issues",
    "get_label_quality_scores",
    "margins",
    "order_label_issues",
]

SCORE_METHODS = (
    "mean_prob_label",
    "self_confidence",
    "aum",
    "mean_weight_terms",
    "mean_loss",
    "mean_weight",
)
"""Named label-quality scores:

* ``"mean_prob_label"``: the mean over epochs of s[y], the probability the model gave the given
  label while training on it (the area under its learning curve; Pleiss et al.'s "area under the
  margin" idea in probability space). Items learnt early and kept score high; labels the network
  only memorises late (typical of wrong labels) score low.
* ``"self_confidence"``: s[y] at the last recorded epoch (cleanlab's ``self_confidence`` of one
  snapshot; the baseline a user tries first).
* ``"aum"``: the mean over epochs of the margin ``s[y] - max_{k != y} s[k]``, mapped from [-1, 1]
  to [0, 1] by ``(aum + 1) / 2``.
* ``"mean_weight_terms"``: the mean over epochs of ``(W_alpha - W_beta + 1) / 2``: how much LiLAW's
  "easy" term outweighs its "hard" term for the item.
* ``"mean_loss"``: ``exp(-mean loss)`` (for cross-entropy, the geometric mean of s[y] over epochs).
* ``"mean_weight"``: the mean LiLAW weight divided by 3 (its upper bound).
"""

ISSUE_RULES = ("noise_rate", "threshold", "predicted_neq_given")

# The audit's defaults, chosen on BreastMNIST and RetinaMNIST with injected symmetric noise (never on
# the floors' data; every variant tried is listed in docs/audit.md).
DEFAULT_METHOD = "mean_prob_label"
DEFAULT_EPOCH_FRACTION = 0.2
DEFAULT_RULE = "noise_rate"
DEFAULT_NOISE_RATE_METHOD = "disagreement"
NOISE_RATE_METHODS = ("disagreement", "gmm", "confident_learning")
DIFFICULTY_LEVELS = ("easy", "moderate", "hard")


# ----------------------------------------------------------------------------- helpers
def _field(dynamics: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in dynamics:
        raise KeyError(f"the dynamics lack the field {name!r}; they have {sorted(dynamics)}.")
    a = np.asarray(dynamics[name], dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"dynamics field {name!r} must have shape (E, N) (epochs x items) but has shape {a.shape}.")
    return a


def _select_epochs(a: np.ndarray, skip_epochs: int, max_epochs: int | None = None) -> np.ndarray:
    if skip_epochs < 0:
        raise ValueError(f"skip_epochs must be >= 0 but is {skip_epochs}.")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1 or None but is {max_epochs}.")
    a = a[-1:] if skip_epochs >= a.shape[0] else a[skip_epochs:]  # keep at least the last epoch
    return a if max_epochs is None else a[:max_epochs]


def early_epochs(n_epochs: int, fraction: float) -> int:
    """How many epochs make the first ``fraction`` of training: ``ceil(fraction * n_epochs)``, at least 1.

    Args:
        n_epochs: the recorded epochs.
        fraction: in (0, 1].

    Returns:
        The ``max_epochs`` to pass to :func:`get_label_quality_scores`.

    Raises:
        ValueError: when ``fraction`` is outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the epoch fraction must lie in (0, 1] but is {fraction}.")
    return max(1, int(np.ceil(fraction * n_epochs - 1e-9)))


def _nanmean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an item never seen: NaN, reported as such
        return np.nanmean(a, axis=0)


def _last_seen(a: np.ndarray) -> np.ndarray:
    """The last non-NaN value along axis 0 (epochs) of (E, N...)."""
    seen = ~np.isnan(a)
    idx = np.where(seen.any(axis=0), a.shape[0] - 1 - np.argmax(seen[::-1], axis=0), 0)
    return np.take_along_axis(a, idx[None], axis=0)[0]


def margins(dynamics: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-epoch margins ``s[y] - max_{k != y} s[k]`` in [-1, 1].

    Args:
        dynamics: needs ``prob_label`` and either ``prob_other`` or ``prob_max`` (then the runner-up
            is taken as ``max s`` when the model disagrees with the label and ``1 - s[y]`` when it
            agrees, which is exact for two classes).

    Returns:
        (E, N) float64 margins (NaN where not seen).
    """
    x = _field(dynamics, "prob_label")
    if "prob_other" in dynamics:
        other = _field(dynamics, "prob_other")
    else:
        m = _field(dynamics, "prob_max")
        other = np.where(x >= m, 1 - x, m)
    return x - other


# ----------------------------------------------------------------------------- scores
def get_label_quality_scores(
    dynamics: Mapping[str, np.ndarray],
    method: str = "mean_prob_label",
    skip_epochs: int = 0,
    max_epochs: int | None = None,
) -> np.ndarray:
    """A label quality score per item from its training dynamics (like ``cleanlab.rank.get_label_quality_scores``).

    Args:
        dynamics: field name -> (E, N) arrays (see the module docstring); which fields are needed
            depends on ``method``.
        method: one of :data:`SCORE_METHODS`.
        skip_epochs: leave out the first epochs (e.g. the unweighted warm-up); at least the last
            epoch is always kept.
        max_epochs: use at most this many epochs (after ``skip_epochs``): the early part of
            training, before the network memorises wrong labels. ``None`` uses all.

    Returns:
        float64 (N,) scores in [0, 1] (or (N, L) for multi-label dynamics); lower means the given
        label is more likely wrong. NaN for an item never seen.

    Raises:
        ValueError: on an unknown method or malformed arrays.
        KeyError: when a field the method needs is missing.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS} but is {method!r}.")
    if method == "self_confidence":
        return _last_seen(_field(dynamics, "prob_label"))
    def sel(a: np.ndarray) -> np.ndarray:
        return _select_epochs(a, skip_epochs, max_epochs)

    if method == "mean_prob_label":
        return _nanmean(sel(_field(dynamics, "prob_label")))
    if method == "aum":
        return (_nanmean(sel(margins(dynamics))) + 1) / 2
    if method == "mean_weight_terms":
        return (_nanmean(sel(_field(dynamics, "w_alpha")) - sel(_field(dynamics, "w_beta"))) + 1) / 2
    if method == "mean_loss":
        return np.exp(-_nanmean(sel(_field(dynamics, "loss"))))
    # mean_weight
    return _nanmean(sel(_field(dynamics, "weight"))) / 3


def consensus_prediction(pred_labels: np.ndarray, skip_epochs: int = 0, max_epochs: int | None = None) -> np.ndarray:
    """The class predicted most often over the epochs (the latest wins ties).

    Args:
        pred_labels: int (E, N) per-epoch predicted classes; -1 where not seen.
        skip_epochs: leave out the first epochs.
        max_epochs: use at most this many epochs after ``skip_epochs``.

    Returns:
        int64 (N,); -1 for an item never seen.
    """
    p = _select_epochs(np.asarray(pred_labels), skip_epochs, max_epochs).astype(np.int64)
    if p.ndim != 2:
        raise ValueError(f"pred_labels must have shape (E, N) but has shape {p.shape}.")
    n_classes = int(max(p.max(initial=-1) + 1, 1))
    counts = np.zeros((n_classes, p.shape[1]), dtype=np.float64)
    e_weight = np.linspace(0, 0.5, p.shape[0], endpoint=False)  # later epochs break ties
    for e in range(p.shape[0]):
        ok = p[e] >= 0
        np.add.at(counts, (p[e][ok], np.nonzero(ok)[0]), 1 + e_weight[e] / max(p.shape[0], 1))
    out = counts.argmax(axis=0)
    out[counts.sum(axis=0) == 0] = -1
    return out


def difficulty(dynamics: Mapping[str, np.ndarray], skip_epochs: int = 0) -> np.ndarray:
    """Easy / moderate / hard per item: which LiLAW term dominates on average over the epochs.

    ``W_alpha = sigmoid(alpha*x - m)`` grows with agreement ("easy"), ``W_delta = exp(-(delta*x - m)^2/2)``
    peaks at ``x = m / delta`` ("moderate"), ``W_beta = sigmoid(m - beta*x)`` grows with disagreement
    ("hard"), with the scalars LiLAW learnt at each epoch. The item's level is the argmax of the
    three terms' means over the epochs. With the initial scalars (2, 2, 2) an item the model agrees
    with is "easy" once s[y] exceeds about 0.85, "hard" when s[y] stays below about 0.05 while
    another class is confident, and "moderate" in between.

    Args:
        dynamics: needs ``w_alpha``, ``w_beta``, ``w_delta`` (E, N).
        skip_epochs: leave out the first epochs.

    Returns:
        str (N,) array of ``"easy"``, ``"moderate"``, ``"hard"`` (``""`` for an item never seen).
    """
    terms = np.stack(
        [_nanmean(_select_epochs(_field(dynamics, k), skip_epochs)) for k in ("w_alpha", "w_delta", "w_beta")]
    )
    unseen = np.isnan(terms).any(axis=0)
    level = np.argmax(np.nan_to_num(terms, nan=-1.0), axis=0)
    out = np.array(DIFFICULTY_LEVELS, dtype=object)[level]
    out[unseen] = ""
    return out.astype(str)


# ----------------------------------------------------------------------------- noise rate
def _check_labels(label_quality: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(label_quality, dtype=np.float64)
    y = np.asarray(labels)
    if q.ndim != 1 or y.shape != q.shape:
        raise ValueError(
            f"label_quality and labels must both have shape (N,) but have shapes {q.shape} and {y.shape}."
        )
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError("labels must be non-negative integers (class indices).")
    return q, y.astype(np.int64)


def _gmm_low_fraction(q: np.ndarray, seed: int = 0) -> float:
    """Share of items in the lower-mean component of a two-component 1-D Gaussian mixture."""
    q = q[np.isfinite(q)]
    if q.size < 10 or np.ptp(q) < 1e-6:
        return 0.0
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-4).fit(q.reshape(-1, 1))
    low = int(np.argmin(gmm.means_.ravel()))
    return float((gmm.predict_proba(q.reshape(-1, 1))[:, low] > 0.5).mean())


def _confident_joint_rate(labels: np.ndarray, pred_probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class off-diagonal share of cleanlab's confident joint (calibrated to the label counts)."""
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.shape != (labels.size, num_classes):
        raise ValueError(f"pred_probs must have shape (N, C)=({labels.size}, {num_classes}) but has shape {p.shape}.")
    thresholds = np.array(
        [p[labels == k, k].mean() if np.any(labels == k) else 1.0 for k in range(num_classes)]
    )
    above = p >= thresholds[None, :] - 1e-6
    p_masked = np.where(above, p, -np.inf)
    has = above.any(axis=1)
    guess = p_masked.argmax(axis=1)
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint, (labels[has], guess[has]), 1)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    row = joint.sum(axis=1, keepdims=True)
    joint = np.where(row > 0, joint / np.maximum(row, 1) * counts[:, None], 0)  # calibrate rows to label counts
    off = joint.sum(axis=1) - np.diag(joint)
    return np.where(counts > 0, off / np.maximum(counts, 1), 0.0)


def estimate_noise_rate(
    label_quality: np.ndarray,
    labels: np.ndarray,
    method: str = "disagreement",
    per_class: bool = False,
    pred_labels: np.ndarray | None = None,
    pred_probs: np.ndarray | None = None,
    num_classes: int | None = None,
) -> float | np.ndarray:
    """Estimates the share of wrong labels from the run itself: no clean labels needed.

    Methods (:data:`NOISE_RATE_METHODS`):

    * ``"disagreement"``: the share of items whose consensus prediction over the epochs
      (``pred_labels``, see :func:`consensus_prediction`) differs from the given label; without
      ``pred_labels``, the share with ``label_quality < 0.5``.
    * ``"gmm"``: the share of items in the lower component of a two-component Gaussian mixture
      fitted to ``label_quality`` (the DivideMix-style split of clean and noisy items).
    * ``"confident_learning"``: the off-diagonal share of cleanlab's calibrated confident joint
      (needs ``pred_probs``, e.g. out-of-sample probabilities from cross-validation).

    Args:
        label_quality: (N,) scores from :func:`get_label_quality_scores`.
        labels: int (N,) given labels.
        method: one of :data:`NOISE_RATE_METHODS`.
        per_class: return one rate per class (the share of wrong labels among the items GIVEN
            that class), shape (C,), instead of one overall rate.
        pred_labels: int (N,) consensus predictions, for ``"disagreement"``.
        pred_probs: (N, C) class probabilities, for ``"confident_learning"``.
        num_classes: C; by default ``max(labels) + 1``.

    Returns:
        The overall rate in [0, 1], or float64 (C,) per-class rates.

    Raises:
        ValueError: on an unknown method, mismatched shapes, or a missing input the method needs.
    """
    if method not in NOISE_RATE_METHODS:
        raise ValueError(f"method must be one of {NOISE_RATE_METHODS} but is {method!r}.")
    q, y = _check_labels(label_quality, labels)
    c = int(num_classes if num_classes is not None else (y.max() + 1 if y.size else 1))
    counts = np.bincount(y, minlength=c).astype(np.float64)
    if method == "confident_learning":
        if pred_probs is None:
            raise ValueError("method='confident_learning' needs pred_probs (N, C).")
        rates = _confident_joint_rate(y, pred_probs, c)
    elif method == "disagreement":
        if pred_labels is not None:
            p = np.asarray(pred_labels).reshape(-1)
            if p.shape != y.shape:
                raise ValueError(f"pred_labels must have shape {y.shape} but has shape {p.shape}.")
            wrong = (p != y) & (p >= 0)
        else:
            wrong = q < 0.5
        rates = np.array([wrong[y == k].mean() if counts[k] else 0.0 for k in range(c)])
    else:  # gmm
        rates = np.array([_gmm_low_fraction(q[y == k]) if counts[k] else 0.0 for k in range(c)])
    if per_class:
        return rates
    return float((rates * counts).sum() / max(counts.sum(), 1))


# ----------------------------------------------------------------------------- issues
def order_label_issues(label_quality: np.ndarray) -> np.ndarray:
    """Indices from the most to the least likely label issue (lowest score first; NaN last).

    Args:
        label_quality: (N,) scores.

    Returns:
        int64 (N,) indices.
    """
    q = np.asarray(label_quality, dtype=np.float64)
    return np.argsort(np.where(np.isnan(q), np.inf, q), kind="stable")


def find_label_issues(
    label_quality: np.ndarray,
    labels: np.ndarray,
    rule: str = "noise_rate",
    noise_rate: float | Sequence[float] | np.ndarray | None = None,
    threshold: float | Sequence[float] | np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
    num_classes: int | None = None,
    noise_rate_method: str = "disagreement",
    return_thresholds: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Flags likely label issues, with thresholds per class (classes are often imbalanced).

    Rules (:data:`ISSUE_RULES`):

    * ``"noise_rate"`` (cleanlab's ``prune_by_class``): in each class ``k``, flag the
      ``round(r_k * n_k)`` lowest-scored items GIVEN label ``k``, where ``n_k`` is the class count
      and ``r_k`` the class's noise rate: ``noise_rate`` (one float for all classes, or one per
      class) or, when ``None``, :func:`estimate_noise_rate` per class with ``noise_rate_method``
      (needs no clean labels). The per-class threshold is the score of the last item flagged.
    * ``"threshold"``: flag ``label_quality < threshold[k]`` (one float, or one per class).
    * ``"predicted_neq_given"``: flag where the consensus prediction (``pred_labels``) differs from
      the given label.

    Args:
        label_quality: (N,) scores (lower = more likely wrong).
        labels: int (N,) given labels.
        rule: one of :data:`ISSUE_RULES`.
        noise_rate: for ``"noise_rate"``.
        threshold: for ``"threshold"``.
        pred_labels: int (N,) consensus predictions, for ``"predicted_neq_given"`` and the
            ``"disagreement"`` noise-rate estimate.
        num_classes: C; by default ``max(labels) + 1``.
        noise_rate_method: how ``r_k`` is estimated when ``noise_rate`` is ``None``.
        return_thresholds: also return the per-class thresholds (C,) (NaN where not defined).

    Returns:
        bool (N,) ``is_label_issue``; with ``return_thresholds``, ``(is_label_issue, thresholds)``.

    Raises:
        ValueError: on an unknown rule, mismatched shapes or a missing argument the rule needs.
    """
    if rule not in ISSUE_RULES:
        raise ValueError(f"rule must be one of {ISSUE_RULES} but is {rule!r}.")
    q, y = _check_labels(label_quality, labels)
    c = int(num_classes if num_classes is not None else (y.max() + 1 if y.size else 1))
    flags = np.zeros(q.shape, dtype=bool)
    thresholds = np.full(c, np.nan)
    if rule == "predicted_neq_given":
        if pred_labels is None:
            raise ValueError("rule='predicted_neq_given' needs pred_labels.")
        p = np.asarray(pred_labels).reshape(-1)
        if p.shape != y.shape:
            raise ValueError(f"pred_labels must have shape {y.shape} but has shape {p.shape}.")
        flags = (p != y) & (p >= 0)
    elif rule == "threshold":
        if threshold is None:
            raise ValueError("rule='threshold' needs threshold (a float or one per class).")
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (c,)).copy()
        flags = q < thresholds[y]
    else:
        if noise_rate is None:
            rates = estimate_noise_rate(
                q, y, method=noise_rate_method, per_class=True, pred_labels=pred_labels, num_classes=c
            )
        else:
            rates = np.broadcast_to(np.asarray(noise_rate, dtype=np.float64), (c,))
        if np.any((rates < 0) | (rates > 1)):
            raise ValueError(f"noise rates must lie in [0, 1] but are {np.round(rates, 4).tolist()}.")
        for k in range(c):
            members = np.nonzero(y == k)[0]
            n_flag = int(round(float(rates[k]) * members.size))
            if n_flag == 0:
                continue
            chosen = members[order_label_issues(q[members])[:n_flag]]
            flags[chosen] = True
            thresholds[k] = float(np.nanmax(q[chosen])) if np.isfinite(q[chosen]).any() else np.nan
    flags &= ~np.isnan(q)
    if return_thresholds:
        return flags, thresholds
    return flags
