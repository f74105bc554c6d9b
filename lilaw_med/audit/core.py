"""The audit of a run folder, as typed objects: what was read, what was chosen, what was found.

:meth:`~lilaw_med.audit.record.RunRecord.read` reads the run folder once, :func:`audit_split` audits each recorded split
(-> :class:`SplitAudit`) and hands the result to the writers of
:mod:`lilaw_med.audit.report`. Every step is a pure function of arrays from
:mod:`lilaw_med.audit.window` (which epochs), :mod:`lilaw_med.audit.rank` (the label quality
score), :mod:`lilaw_med.audit.counts` (how many labels are wrong, per class, with an interval, and
which) and :mod:`lilaw_med.audit.difficulty` (easy / moderate / hard).

How the defaults below were chosen, and what each alternative gave: ``docs/audit.md`` (section 5).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lilaw_med.audit.counts import (
    NoiseEstimate,
    combine_estimates,
    estimate_noise,
    expected_precision,
    find_label_issues,
    wrong_label_chances,
)
from lilaw_med.audit.difficulty import DIFFICULTY_LEVELS, difficulty
from lilaw_med.audit.rank import SCORE_METHODS, get_label_quality_scores, order_label_issues
from lilaw_med.audit.record import RunRecord
from lilaw_med.audit.window import (
    LOSS_RULES,
    WINDOW_RULES,
    ScoringWindow,
    choose_window,
    epoch_mean,
    prefix_pred_probs,
    window_pred_probs,
)
from lilaw_med.errors import InputError

__all__ = [
    "DEFAULT_ADJUST",
    "DEFAULT_COUNT_WINDOW",
    "DEFAULT_FOLD_CHECKPOINT",
    "DEFAULT_FOLD_COMBINE",
    "DEFAULT_METHOD",
    "DEFAULT_WINDOW",
    "IDENTIFIABLE_WIDTH",
    "LEARNT_MARGIN",
    "FOLD_CHECKPOINTS",
    "FOLD_COMBINE",
    "AuditOptions",
    "SplitAudit",
    "audit_split",
    "count_scoring_window",
    "count_window_candidates",
    "not_identifiable_reasons",
    "review_budget",
    "scoring_window",
]

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = "best_val_loss"
DEFAULT_COUNT_WINDOW = "val_loss_at_least_fraction"
DEFAULT_METHOD = "normalized_margin"
DEFAULT_ADJUST = False
FOLD_COMBINE = ("oof", "mean")
"""How out-of-fold probabilities (``--folds``) meet the run's own: ``"oof"`` alone, or ``"mean"``
of the two (the run's window probabilities and the held-out fold model's)."""
DEFAULT_FOLD_COMBINE = "mean"
FOLD_CHECKPOINTS = ("best", "final")
"""Which checkpoint of each fold model predicts its held-out fold (``--fold-checkpoint``): the best by
the noisy validation key metric (the one ``lilaw-med predict`` uses; the final one when the fold
kept none), or the final one."""
DEFAULT_FOLD_CHECKPOINT = "best"
MODEL_ERROR_LIMIT = 0.10
"""The noise rate is called not identifiable from one run when the network's own error on the
validation items, ``(1 - estimated rate) - best noisy validation accuracy``, exceeds both this and
the estimated rate itself: the confident joint cannot then tell the network's confusions from wrong
labels."""
LEARNT_MARGIN = 0.02
"""How far the network's agreement with the given labels must rise above always answering the largest
class before the audit treats it as having learnt. Read on the scored window's predictions of the
audited split's items and on the best noisy validation accuracy; less than this above the largest
class, the network's confusions and the wrong labels cannot be told apart, so the count is not
identifiable and the scores are unreliable."""
IDENTIFIABLE_WIDTH = 0.20
"""The widest 95% interval of the share of wrong labels with which the audit still calls the count
identifiable: wider, the windows and the bootstrap disagree by more than about +-0.10, so the report
says the count is not pinned down and gives the wide interval of every count one run cannot
identify (docs/audit.md, section 5.6)."""
DEFAULT_FOLD_OVERRIDES = ("lilaw.enabled=false",)
"""The fold models train without LiLAW (cleanlab's recipe, about 25% cheaper); ``--fold-set
lilaw.enabled=true`` trains them with the run's own config."""


@dataclass(frozen=True)
class AuditOptions:
    """How to audit a run (every field has the shipped default).

    Attributes:
        window: which epochs the scores read (:data:`lilaw_med.audit.window.WINDOW_RULES`).
        count_window: which epochs the per-class noise estimate reads, chosen on the end-of-epoch
            validation loss (:func:`count_scoring_window`). A confident joint on in-sample
            probabilities undercounts once the network has memorised wrong labels and overcounts
            while it is still learning (its own confusions pass the thresholds); how this window
            was chosen is in docs/audit.md (5.2, 5.3).
        window_fraction: the share of epochs for the ``"fraction"`` rules.
        method: the label quality score (:data:`lilaw_med.audit.rank.SCORE_METHODS`).
        adjust_pred_probs: subtract the per-class confident thresholds before scoring.
        folds: K > 1 cross-fits K extra trainings for out-of-fold probabilities; 0 uses the run alone.
        fold_overrides: ``--set``-style overrides of the fold trainings (default: LiLAW off).
        fold_combine: :data:`FOLD_COMBINE`.
        fold_checkpoint: :data:`FOLD_CHECKPOINTS`.
        noise_rate: flag this share of each class instead of the estimated per-class rates.
        review: a review budget instead of the estimated counts: the ``review`` lowest-scored items
            of each split when >= 1 (capped at the split's size), the share ``review`` of each split
            when in (0, 1); the summary gives the expected precision at that budget.
        ordinal: the classes are ordinal grades (also read from the datalist's ``"ordinal"`` key): the
            noise rate is then reported as not identifiable from one run, with a wide interval.
        n_bootstrap: resamples for the noise-rate intervals.
        splits: which recorded splits to audit.
        top_k: thumbnails per class in the report.
        thumbnails: read the images for the report.
        final_model_baseline: with known truth, also score the final model's self-confidence.
        include_identifying: add the DICOM PatientID column (off: no identifying tag is written).
    """

    window: str = DEFAULT_WINDOW
    count_window: str = DEFAULT_COUNT_WINDOW
    window_fraction: float = 0.2
    method: str = DEFAULT_METHOD
    adjust_pred_probs: bool = DEFAULT_ADJUST
    folds: int = 0
    fold_overrides: tuple[str, ...] = DEFAULT_FOLD_OVERRIDES
    fold_combine: str = DEFAULT_FOLD_COMBINE
    fold_checkpoint: str = DEFAULT_FOLD_CHECKPOINT
    noise_rate: float | None = None
    review: float | None = None
    ordinal: bool = False
    n_bootstrap: int = 200
    splits: tuple[str, ...] = ("training", "validation")
    top_k: int = 8
    thumbnails: bool = True
    final_model_baseline: bool = True
    include_identifying: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.window in WINDOW_RULES, f"window must be one of {WINDOW_RULES} but is {self.window!r}."),
            (self.count_window in WINDOW_RULES, f"count_window must be one of {WINDOW_RULES} but is {self.count_window!r}."),
            (0 < self.window_fraction <= 1, f"window_fraction must lie in (0, 1] but is {self.window_fraction}."),
            (self.method in SCORE_METHODS, f"method must be one of {sorted(SCORE_METHODS)} but is {self.method!r}."),
            (self.folds == 0 or self.folds >= 2, f"folds must be 0 (no cross-fitting) or at least 2 but is {self.folds}."),
            (self.fold_combine in FOLD_COMBINE, f"fold_combine must be one of {FOLD_COMBINE} but is {self.fold_combine!r}."),
            (self.fold_checkpoint in FOLD_CHECKPOINTS,
             f"fold_checkpoint must be one of {FOLD_CHECKPOINTS} but is {self.fold_checkpoint!r}."),
            (self.noise_rate is None or 0 <= self.noise_rate <= 1, f"noise_rate must lie in [0, 1] but is {self.noise_rate}."),
            (self.review is None or (self.review > 0 and (self.review < 1 or float(self.review).is_integer())),
             f"review must be a count >= 1 or a share in (0, 1) but is {self.review}."),
            (self.review is None or self.noise_rate is None, "review and noise_rate both set the flagged count: give one."),
            (self.n_bootstrap >= 0, f"n_bootstrap must be >= 0 but is {self.n_bootstrap}."),
            (self.top_k >= 0, f"top_k must be >= 0 but is {self.top_k}."),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


# ----------------------------------------------------------------------------- one split
@dataclass
class SplitAudit:
    """The audit of one split's items.

    Attributes:
        split: ``"training"`` or ``"validation"``.
        ids: (N) item ids.
        labels: int (N,) given labels.
        window: the scoring window.
        pred_probs: (N, C) the probabilities the scores read (window, or window and out-of-fold).
        window_probs: (N, C) the run's own probabilities over the window.
        oof_probs: (N, C) out-of-fold probabilities, or None.
        scores: (N,) label quality, lower = more likely wrong.
        rank: int (N,) 1 = most suspicious.
        noise: the estimated per-class noise rates with intervals.
        is_label_issue: bool (N,).
        thresholds: (C,) the score of the last item flagged per class (NaN where none).
        levels: str (N,) easy / moderate / hard.
        terms: field -> (N,) means over the window of the recorded LiLAW terms and weight.
        epochs_seen: int (N,) epochs in which the item was seen.
        warnings: sentences for the user.
        count_window: the epochs whose probabilities the noise estimate read.
        window_estimates: ``(window, estimate)`` of every candidate count window (the count window first).
        not_identifiable: why one run cannot identify the noise rate (empty when it can); the
            interval of :attr:`noise` is then wide (see :func:`audit_split`).
        expected_precision: the expected share of wrong labels among the flagged items, by the count
            window's confident joint (:func:`lilaw_med.audit.counts.expected_precision`).
        flag_rule: how the number of flagged items was set (``"estimate"``, ``"noise_rate"``, ``"review"``).
    """

    split: str
    ids: list[str]
    labels: np.ndarray
    window: ScoringWindow
    pred_probs: np.ndarray
    window_probs: np.ndarray
    oof_probs: np.ndarray | None
    scores: np.ndarray
    rank: np.ndarray
    noise: NoiseEstimate
    is_label_issue: np.ndarray
    thresholds: np.ndarray
    levels: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    epochs_seen: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    count_window: ScoringWindow | None = None
    window_estimates: list[tuple[ScoringWindow, NoiseEstimate]] = field(default_factory=list)
    not_identifiable: list[str] = field(default_factory=list)
    expected_precision: float = math.nan
    flag_rule: str = "estimate"

    @property
    def identifiable(self) -> bool:
        """Whether one run identifies the noise rate (:attr:`not_identifiable` is empty)."""
        return not self.not_identifiable

    @property
    def predicted(self) -> np.ndarray:
        """int (N,) the most probable class of :attr:`pred_probs` (-1 without probabilities)."""
        ok = np.isfinite(self.pred_probs).all(axis=1)
        return np.where(ok, np.nan_to_num(self.pred_probs, nan=-1.0).argmax(axis=1), -1)

    @property
    def num_classes(self) -> int:
        return int(self.pred_probs.shape[1])


def scoring_window(record: RunRecord, rule: str, options: AuditOptions,
                   val_loss: np.ndarray | None = None) -> ScoringWindow:
    """The window ``rule`` gives for the run's training epochs and its noisy validation curves.

    Args:
        record: the run folder.
        rule: one of :data:`lilaw_med.audit.window.WINDOW_RULES`.
        options: the audit options (``window_fraction``).
        val_loss: the loss curve the loss rules read (default: :attr:`RunRecord.val_loss`).

    Returns:
        The :class:`ScoringWindow`.
    """
    return choose_window(len(record.dynamics["training"].epochs), rule,
                         val_loss=record.val_loss if val_loss is None else val_loss,
                         val_accuracy=record.val_accuracy, fraction=options.window_fraction)


def count_scoring_window(record: RunRecord, options: AuditOptions) -> ScoringWindow:
    """The epochs the per-class noise estimate reads.

    The confident joint is a statement about one model's probabilities, so its window follows the
    loss of the model as it stands at the end of each epoch (:attr:`RunRecord.epoch_val_loss`); the
    meta step's loss (which the scoring window follows) averages a model that changes during the
    epoch (docs/audit.md, section 5). A run without it falls
    back to :attr:`RunRecord.val_loss`, and a run with no validation loss at all to the first
    ``window_fraction`` of the epochs (counting on every epoch would miss the memorised labels).

    Args:
        record: the run folder.
        options: the audit options (``count_window``, ``window_fraction``).

    Returns:
        The :class:`ScoringWindow`; its ``reason`` names the curve it read.
    """
    if options.count_window not in LOSS_RULES:
        return scoring_window(record, options.count_window, options)
    for curve, name in ((record.epoch_val_loss, "the end-of-epoch validation loss of metrics.csv"),
                        (record.val_loss, f"the validation loss of the {record.val_loss_source}")):
        if curve is not None and bool(np.isfinite(curve).any()):
            w = scoring_window(record, options.count_window, options, val_loss=curve)
            return ScoringWindow(w.start, w.stop, w.rule, f"{w.reason} (read on {name})")
    w = scoring_window(record, "fraction", options)
    return ScoringWindow(w.start, w.stop, w.rule, f"{w.reason}: the run has no validation loss")


def _fit(window: ScoringWindow, n_epochs: int) -> ScoringWindow:
    """The window cut to a split's recorded epochs (the validation split may have fewer)."""
    stop = min(window.stop, n_epochs)
    if stop <= window.start:
        return ScoringWindow(0, n_epochs, "all", f"every recorded epoch (1-{n_epochs})")
    return window if stop == window.stop else ScoringWindow(window.start, stop, window.rule, window.reason)


def count_window_candidates(record: RunRecord, options: AuditOptions) -> list[ScoringWindow]:
    """The windows a per-class count could defensibly read: the count window first, then every rule
    that reads the run's own validation curves (both loss curves) or the first share of training.

    ``"all"`` and ``"last"`` are left out (they read the epochs in which wrong labels are memorised),
    and so is a rule that falls back to them for want of its curve. The spread of the estimates over
    these windows is the part of the uncertainty that the choice of epochs adds.

    Returns:
        Distinct windows (by their epochs), the count window first.
    """
    out = [count_scoring_window(record, options)]
    for curve in (record.epoch_val_loss, record.val_loss):
        if curve is not None and bool(np.isfinite(curve).any()):
            out += [scoring_window(record, rule, options, val_loss=curve) for rule in LOSS_RULES]
    if bool(np.isfinite(record.val_accuracy).any()):
        out.append(scoring_window(record, "best_val_accuracy", options))
    out.append(scoring_window(record, "fraction", options))
    seen: set[tuple[int, int]] = set()
    distinct = []
    for k, w in enumerate(out):
        if (w.start, w.stop) in seen or (k > 0 and w.rule in ("all", "last")):
            continue
        seen.add((w.start, w.stop))
        distinct.append(w)
    return distinct


def _window_estimates(views: Mapping[str, Any], labels: np.ndarray, windows: Sequence[ScoringWindow],
                      num_classes: int, options: AuditOptions) -> tuple[list[NoiseEstimate], np.ndarray, np.ndarray]:
    """The noise estimate of each window (one pass over the epochs for the windows that start at the
    first epoch); for the first window, the share of items whose most probable class is not the label,
    per class, and each item's chance of a wrong label (:func:`wrong_label_chances`)."""
    estimates: dict[tuple[int, int], NoiseEstimate] = {}
    disagree = np.zeros(num_classes)
    chances = np.zeros(labels.size)

    def add(w: tuple[int, int], probs: np.ndarray) -> None:
        nonlocal disagree, chances
        estimates[w] = estimate_noise(labels, probs, n_bootstrap=options.n_bootstrap)
        if w == (windows[0].start, windows[0].stop):
            chances = wrong_label_chances(labels, probs)
            ok = np.isfinite(probs).all(axis=1)
            wrong = ok & (np.nan_to_num(probs, nan=-1.0).argmax(axis=1) != labels)
            n = np.bincount(labels[ok], minlength=num_classes)
            disagree = np.where(n > 0, np.bincount(labels[wrong], minlength=num_classes) / np.maximum(n, 1), 0.0)

    stops = [w.stop for w in windows if w.start == 0]
    for stop, probs in prefix_pred_probs(views, labels, stops, num_classes):
        add((0, stop), probs)
    for w in windows:
        if w.start != 0:
            add((w.start, w.stop), window_pred_probs(views, labels, w, num_classes))
    return [estimates[(w.start, w.stop)] for w in windows], disagree, chances


def not_identifiable_reasons(record: RunRecord, options: AuditOptions, estimate: NoiseEstimate,
                             window_probs: np.ndarray | None = None, labels: np.ndarray | None = None) -> list[str]:
    """Why one run cannot identify its noise rate (empty when nothing says so).

    Four situations, each read off the run without clean labels: ordinal grades (the option or the
    datalist's ``"ordinal"`` key); a network still learning (the validation loss the count window
    reads was lowest at the last recorded epoch); a network whose own error on the validation items,
    ``(1 - estimated rate) - best noisy validation accuracy``, exceeds both :data:`MODEL_ERROR_LIMIT`
    and the estimated rate; a network that never beat always answering the largest class by more
    than :data:`LEARNT_MARGIN` (the scored window on the split's items, or the best noisy validation
    accuracy on the validation items).

    Args:
        record: the run folder.
        options: the audit options.
        estimate: the split's estimate over the count window.
        window_probs: (N, C) the split's scoring-window probabilities (NaN rows allowed), with
            ``labels``, for the scored window's agreement with the labels.
        labels: int (N,) the split's given labels.

    Returns:
        One sentence per reason.
    """
    reasons = []
    if options.ordinal or bool(record.datalist.get("ordinal")):
        reasons.append("the classes are ordinal grades: neighbouring grades are confused by the network and by "
                       "graders alike, so one run cannot tell a wrong grade from a hard one")
    n_epochs = len(record.dynamics["training"].epochs)
    for curve in (record.epoch_val_loss, record.val_loss):
        if curve is not None and bool(np.isfinite(curve).any()):
            best = int(np.nanargmin(np.where(np.isfinite(curve), curve, np.inf)))
            last_best = bool(np.all(curve[best + 1:] >= curve[best] - 1e-12)) and best == n_epochs - 1
            if last_best:
                reasons.append(f"the network was still learning: its noisy validation loss was lowest at the last "
                               f"epoch ({n_epochs}), so its own confusions pass the thresholds as wrong labels")
            break
    accuracy = record.val_accuracy[np.isfinite(record.val_accuracy)]
    if accuracy.size:
        error = (1 - estimate.overall) - float(accuracy.max())
        if error > max(MODEL_ERROR_LIMIT, estimate.overall):
            reasons.append(f"the network's own error on the validation items (about {error:.2f}: best noisy "
                           f"validation accuracy {accuracy.max():.2f} against {1 - estimate.overall:.2f} expected "
                           "from the estimate) exceeds the estimated share of wrong labels, so the count cannot "
                           "tell the two apart")
    if window_probs is not None and labels is not None:
        agreement = _agreement_with_labels(window_probs, labels)
        if agreement is not None and agreement[0] < agreement[1] + LEARNT_MARGIN:
            reasons.append(f"the network had not learnt: in the scored epochs it agrees with the given labels no "
                           f"better than always predicting the largest class ({agreement[0]:.3f} vs "
                           f"{agreement[1]:.3f})")
    val_labels = np.array([int(it["label"]) for split, it in record.items.values() if split == "validation"])
    if accuracy.size and val_labels.size:
        largest = float(np.bincount(val_labels).max() / val_labels.size)
        if float(accuracy.max()) < largest + LEARNT_MARGIN:
            reasons.append(f"the network never predicted the validation labels better than always answering the "
                           f"largest class (best noisy validation accuracy {accuracy.max():.3f} vs "
                           f"{largest:.3f}), so its confusions and the wrong labels cannot be told apart")
    return reasons


def _agreement_with_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float] | None:
    """How often the most probable class is the given label, against always answering the largest class.

    Args:
        probs: (N, C) probabilities; rows with NaN (items without any) are left out of the agreement.
        labels: int (N,) given labels; the largest class's share counts every item.

    Returns:
        ``(agreement, largest class's share)``, or None when no item has probabilities.
    """
    ok = np.isfinite(probs).all(axis=1)
    if not ok.any():
        return None
    agreement = float((probs[ok].argmax(axis=1) == labels[ok]).mean())
    counts = np.bincount(labels)
    return agreement, float(counts.max() / max(counts.sum(), 1))


def _wide(estimate: NoiseEstimate, disagree: np.ndarray) -> NoiseEstimate:
    """The interval of a rate one run cannot identify: from 0 to the larger of the interval's upper end
    and the share of items the network's most probable class disagrees with (which counts every
    error of the network as a wrong label)."""

    hi = np.maximum(estimate.per_class_interval[:, 1], disagree)
    total = float(estimate.counts.sum())
    overall_disagree = float((disagree * estimate.counts).sum() / max(total, 1))
    return replace(estimate, per_class_interval=np.stack([np.zeros_like(hi), hi], axis=1),
                   overall_interval=(0.0, max(estimate.overall_interval[1], overall_disagree)))


def _width_reasons(interval: tuple[float, float]) -> list[str]:
    """Why a count with this 95% interval is not pinned down (empty when the interval is no wider than
    :data:`IDENTIFIABLE_WIDTH`)."""
    lo, hi = interval
    if hi - lo <= IDENTIFIABLE_WIDTH + 1e-12:
        return []
    return [f"the count windows' and the bootstrap's 95% interval [{lo:.2f}, {hi:.2f}] is wider than "
            f"{IDENTIFIABLE_WIDTH:.2f}: they disagree about the share of wrong labels by more than about 0.10"]


def review_budget(review: float, n_items: int) -> int:
    """The number of items a review budget flags in a split of ``n_items``: ``review`` itself when
    it is a count (>= 1), else the share ``review`` of the split, rounded; at most ``n_items``."""
    n = int(review) if review >= 1 else int(round(review * n_items))
    return int(min(max(n, 0), n_items))


def _flag(scores: np.ndarray, labels: np.ndarray, rank: np.ndarray, noise: NoiseEstimate, options: AuditOptions,
          num_classes: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(flags, per-class thresholds, rule)``: the estimated counts per class, a fixed share of each
    class, or a review budget over the split's ranking."""
    if options.review is not None:
        flags = rank <= review_budget(options.review, len(scores))
        flags &= np.isfinite(scores)
        thresholds = np.full(num_classes, np.nan)
        for k in range(num_classes):
            chosen = flags & (labels == k)
            if chosen.any():
                thresholds[k] = float(scores[chosen].max())
        return flags, thresholds, "review"
    if options.noise_rate is not None:
        counts = np.bincount(labels, minlength=num_classes)
        flags, thresholds = find_label_issues(scores, labels, np.rint(np.full(num_classes, options.noise_rate) * counts))
        return flags, thresholds, "noise_rate"
    flags, thresholds = find_label_issues(scores, labels, noise.n_wrong)
    return flags, thresholds, "estimate"


def audit_split(
    record: RunRecord,
    split: str,
    options: AuditOptions,
    window: ScoringWindow | None = None,
    oof_probs: np.ndarray | None = None,
) -> SplitAudit:
    """Scores, counts, flags and grades one split's items.

    The dynamics are read one epoch at a time (:meth:`Dynamics.views`): memory holds the (N, C)
    window means, never the (E, N, C) history.

    Args:
        record: the run folder.
        split: a split with recorded dynamics.
        options: the audit options.
        window: the scoring window (chosen from the run's validation curve when ``None``).
        oof_probs: (N, C) out-of-fold probabilities in the order of the split's dynamics ids.

    Returns:
        The :class:`SplitAudit`.
    """
    dyn = record.dynamics[split]
    views = dyn.views()
    labels = record.labels(dyn.ids)
    max_pred = max((int(e.max()) for e in views["pred_label"]), default=-1)
    num_classes = max(len(record.class_names), int(labels.max()) + 1, dyn.num_classes, max_pred + 1)
    window = _fit(window or scoring_window(record, options.window, options), len(dyn.epochs))
    w_probs = window_pred_probs(views, labels, window, num_classes)
    probs = w_probs
    if oof_probs is not None:
        probs = oof_probs if options.fold_combine == "oof" else np.where(
            np.isfinite(w_probs), (w_probs + oof_probs) / 2, oof_probs)
    candidates = [_fit(w, len(dyn.epochs)) for w in count_window_candidates(record, options)]
    count_window = candidates[0]
    estimates, disagree, chances = _window_estimates(views, labels, candidates, num_classes, options)
    scores = get_label_quality_scores(labels, probs, method=options.method, adjust_pred_probs=options.adjust_pred_probs)
    noise = combine_estimates(estimates[0], estimates[1:])
    reasons = (not_identifiable_reasons(record, options, estimates[0], w_probs, labels)
               + _width_reasons(noise.overall_interval))
    if reasons:
        noise = _wide(noise, disagree)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order_label_issues(scores)] = np.arange(1, len(scores) + 1)
    flags, thresholds, rule = _flag(scores, labels, rank, noise, options, num_classes)
    precision = expected_precision(chances, flags)
    terms = {k: epoch_mean(views[k][window.start:window.stop]) for k in ("w_alpha", "w_beta", "w_delta", "weight")}
    epochs_seen = np.zeros(len(dyn.ids), dtype=np.int64)
    for c in views["count"]:
        epochs_seen += c > 0
    audit = SplitAudit(
        split=split, ids=list(dyn.ids), labels=labels, window=window, pred_probs=probs, window_probs=w_probs,
        oof_probs=oof_probs, scores=scores, rank=rank, noise=noise, is_label_issue=flags, thresholds=thresholds,
        levels=difficulty(labels, probs), terms=terms, epochs_seen=epochs_seen, count_window=count_window,
        window_estimates=list(zip(candidates, estimates, strict=True)), not_identifiable=reasons,
        expected_precision=precision, flag_rule=rule,
    )
    audit.warnings.extend(_learning_warnings(audit))
    if reasons:
        audit.warnings.append("the noise rate is not identifiable from this run (" + "; ".join(reasons) + "): the "
                              "interval is wide; a clean validation set, or more items, narrows it (--folds changes the ranking, not "
                              "the count).")
    for w in audit.warnings:
        logger.warning("audit of the %s items: %s", split, w)
    return audit


def _learning_warnings(audit: SplitAudit) -> list[str]:
    """A warning when the scoring window's predictions agree with the labels no better than the largest
    class (by :data:`LEARNT_MARGIN`): the same reading as the not-identifiable reason, with advice."""
    agreement = _agreement_with_labels(audit.window_probs, audit.labels)
    if agreement is None or agreement[0] >= agreement[1] + LEARNT_MARGIN:
        return []
    return [
        f"in the scored epochs the network agrees with the given {audit.split} labels no better than always "
        f"predicting the largest class ({agreement[0]:.3f} vs {agreement[1]:.3f}): it had not learnt yet, so the "
        "scores and counts are unreliable. Train longer, or cross-fit (--folds 4)."
    ]


def level_counts(audit: SplitAudit, k: int | None = None) -> dict[str, int]:
    """Items per difficulty level (of class ``k`` when given)."""
    mask = np.ones(len(audit.ids), dtype=bool) if k is None else audit.labels == k
    return {lv: int(((audit.levels == lv) & mask).sum()) for lv in DIFFICULTY_LEVELS}
