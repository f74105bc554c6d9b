"""Which epochs of a run tell the truth about its labels, and the class probabilities they give.

A network fits the consistent part of its labels first and memorises the wrong ones later;
once memorised, a wrong label looks as confident as a right one. The audit therefore reads each
item's class probabilities over a *scoring window*: the epochs up to the point where memorisation
begins. That point is read off the run itself, without clean labels: the validation items are
never trained on, so their (noisy) loss stops falling when the network starts fitting noise
rather than signal. A fixed share of the epochs fails both ways: too early for a short run that
has not learnt yet, too late for a long one (docs/audit.md).

Pure functions over arrays (no I/O, no torch). A field over epochs is anything that yields one
epoch's array at a time: a stacked (E, N, ...) array or a
:class:`lilaw_med.run.dynamics_format.EpochSeries`, which reads one epoch of a memory-mapped run at a
time, so the window means of a million items hold one epoch and one float64 sum in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lilaw_med.errors import InputError

__all__ = [
    "LOSS_RULES", "WINDOW_RULES", "ScoringWindow", "choose_window", "epoch_mean", "prefix_pred_probs", "window_pred_probs",
]

WINDOW_RULES = ("val_loss_at_least_fraction", "best_val_loss", "best_val_accuracy", "all", "last", "fraction")
"""How the scoring window ends:

* ``"val_loss_at_least_fraction"``: at the later of the best-validation-loss epoch and the end
  of the first ``ceil(fraction * E)`` epochs (a minimum at epoch 1 or 2 of a small, noisy
  validation split is mostly chance; the fraction guards the lower end);
* ``"best_val_loss"``: at the epoch with the lowest validation loss, i.e. where memorisation
  begins (the curve is the caller's: the audit's scoring window reads the meta step's validation
  forwards when recorded, else ``val_loss`` of ``metrics.csv``; its count window reads
  ``metrics.csv`` first);
* ``"best_val_accuracy"``: at the epoch with the highest validation accuracy (later epochs win ties);
* ``"all"``: every recorded epoch;
* ``"last"``: the last epoch only (the final-epoch self-confidence baseline);
* ``"fraction"``: the first ``ceil(fraction * E)`` epochs.
"""
LOSS_RULES = ("val_loss_at_least_fraction", "best_val_loss")
"""The rules that read a validation loss curve."""


@dataclass(frozen=True)
class ScoringWindow:
    """The epochs the audit reads: ``epochs[start:stop]`` of the recorded ones (0-based slice).

    Attributes:
        start: first index (inclusive).
        stop: last index (exclusive).
        rule: the rule that chose it (:data:`WINDOW_RULES`).
        reason: one sentence for the report (which epoch and why).
    """

    start: int
    stop: int
    rule: str
    reason: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"a scoring window needs 0 <= start < stop but is [{self.start}, {self.stop}).")

    @property
    def n_epochs(self) -> int:
        return self.stop - self.start


def _argbest(curve: np.ndarray, lower_is_better: bool) -> int | None:
    c = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(c).any():
        return None
    c = np.where(np.isfinite(c), c, np.inf if lower_is_better else -np.inf)
    c = c if lower_is_better else -c
    best = c.min()
    return int(np.nonzero(c <= best + 1e-12)[0][-1])  # the latest of equal epochs


def choose_window(
    n_epochs: int,
    rule: str = "best_val_loss",
    val_loss: np.ndarray | None = None,
    val_accuracy: np.ndarray | None = None,
    fraction: float = 0.2,
) -> ScoringWindow:
    """Chooses the scoring window of a run.

    Args:
        n_epochs: E, the recorded epochs.
        rule: one of :data:`WINDOW_RULES`.
        val_loss: (E,) validation loss per recorded epoch (NaN where missing), for ``"best_val_loss"``.
        val_accuracy: (E,) validation accuracy per recorded epoch, for ``"best_val_accuracy"``.
        fraction: for ``"fraction"``, in (0, 1].

    Returns:
        The :class:`ScoringWindow`. A rule that needs a validation curve the run lacks falls back to
        ``"all"`` and says so in ``reason``.

    Raises:
        InputError: on an unknown rule or a ``fraction`` outside (0, 1].
        ValueError: for ``n_epochs < 1`` or a curve of the wrong length.

    Example::

        window = choose_window(30, "best_val_loss", val_loss=record.val_loss)
        window.start, window.stop, window.reason                # epochs [start, stop) and why
    """
    if rule not in WINDOW_RULES:
        raise InputError(f"rule must be one of {WINDOW_RULES} but is {rule!r}.")
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be at least 1 but is {n_epochs}.")
    if rule in ("all", "last", "fraction"):
        return _fixed_window(n_epochs, rule, fraction)
    if rule == "val_loss_at_least_fraction":
        return _floored_window(n_epochs, val_loss, fraction)
    if rule == "best_val_loss":
        return _best_window(n_epochs, rule, val_loss, "loss", lower=True)
    return _best_window(n_epochs, rule, val_accuracy, "accuracy", lower=False)


def _fixed_window(n_epochs: int, rule: str, fraction: float) -> ScoringWindow:
    """The window of a rule that needs no curve: ``"all"``, ``"last"`` or ``"fraction"``."""
    if rule == "all":
        return ScoringWindow(0, n_epochs, rule, f"every recorded epoch (1-{n_epochs})")
    if rule == "last":
        return ScoringWindow(n_epochs - 1, n_epochs, rule, f"the last epoch ({n_epochs})")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must lie in (0, 1] but is {fraction}.")
    stop = max(1, math.ceil(fraction * n_epochs - 1e-9))
    return ScoringWindow(0, stop, rule, f"the first {stop} of {n_epochs} epochs ({fraction:g} of training)")


def _floored_window(n_epochs: int, val_loss: np.ndarray | None, fraction: float) -> ScoringWindow:
    """``"val_loss_at_least_fraction"``: the best-validation-loss window, at least the first ``fraction``."""
    by_loss = choose_window(n_epochs, "best_val_loss", val_loss=val_loss)
    floor = choose_window(n_epochs, "fraction", fraction=fraction)
    if by_loss.rule != "best_val_loss" or by_loss.stop >= floor.stop:
        return by_loss
    return ScoringWindow(0, floor.stop, "val_loss_at_least_fraction",
                         f"epochs 1-{floor.stop} of {n_epochs}: the noisy validation loss was best "
                         f"at epoch {by_loss.stop}, earlier than the first {fraction:g} of training, which is kept")


def _best_window(n_epochs: int, rule: str, curve: np.ndarray | None, what: str, lower: bool) -> ScoringWindow:
    """The epochs up to the best of a validation ``curve`` (``"all"`` when the run has none)."""
    if curve is not None and len(curve) != n_epochs:
        raise ValueError(f"the validation {what} curve has {len(curve)} values for {n_epochs} epochs.")
    best = None if curve is None else _argbest(curve, lower)
    if best is None:
        return ScoringWindow(0, n_epochs, "all", f"every recorded epoch (1-{n_epochs}): the run has no validation {what}")
    return ScoringWindow(
        0, best + 1, rule,
        f"epochs 1-{best + 1} of {n_epochs}: the noisy validation {what} was best at epoch {best + 1}, "
        "after which the network fits its training labels rather than what generalises",
    )


def _prefix_means(epochs: Iterable[np.ndarray], stops: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(stop, mean of epochs [0, stop))`` for each ``stop`` in increasing order, in one pass.

    The sum is float64 and the epochs are added in order, so each mean equals ``np.nanmean`` of the
    stacked float64 epochs (which also adds along the epoch axis in order) bit for bit.
    """
    total: np.ndarray | None = None
    count: np.ndarray | None = None
    wanted = sorted(set(int(s) for s in stops))
    done = 0
    for e, epoch in enumerate(epochs):
        if done == len(wanted):
            return
        a = np.array(epoch, dtype=np.float64)  # a copy: zeroed in place where NaN
        seen = ~np.isnan(a)
        a[~seen] = 0.0
        if total is None:
            total, count = a, seen.astype(np.int32)
        else:
            total += a
            count += seen
        del a, seen
        while done < len(wanted) and wanted[done] == e + 1:
            mean = np.full(total.shape, np.nan)  # an item not seen in the window stays NaN
            np.divide(total, count, out=mean, where=count > 0)
            yield wanted[done], mean
            del mean
            done += 1
    if done < len(wanted):
        raise ValueError(f"a window ends at epoch {wanted[done]} but only {0 if total is None else e + 1} were recorded.")


def epoch_mean(epochs: Iterable[np.ndarray]) -> np.ndarray:
    """The mean over epochs ignoring NaN (epochs an item was not seen); NaN for never seen.

    Args:
        epochs: the field over epochs: a stacked (E, N, ...) array or anything yielding one epoch's
            (N, ...) array at a time (:class:`~lilaw_med.run.dynamics_format.EpochSeries`).

    Returns:
        float64 (N, ...).
    """
    epochs = list(epochs) if not isinstance(epochs, (np.ndarray, Sequence)) else epochs
    if len(epochs) == 0:
        raise ValueError("epoch_mean needs at least one epoch.")
    return next(_prefix_means(epochs, [len(epochs)]))[1]


def _probs_from_prob_label(x: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64)
    rest = (1 - x) / max(num_classes - 1, 1)
    out = np.repeat(rest[:, None], num_classes, axis=1)
    out[np.arange(y.size), y] = x
    return out


def prefix_pred_probs(dynamics: Mapping[str, Sequence[np.ndarray]], labels: np.ndarray, stops: Sequence[int],
                      num_classes: int) -> Iterator[tuple[int, np.ndarray]]:
    """The window probabilities of the windows ``epochs[0:stop]`` for several stops, in one pass over the epochs.

    Args:
        dynamics: as for :func:`window_pred_probs`.
        labels: int (N,) given labels.
        stops: the windows' ends (exclusive, 1..E).
        num_classes: C.

    Returns:
        An iterator of ``(stop, float64 (N, C))`` in increasing ``stop``.

    Example::

        for stop, probs in prefix_pred_probs(record.dynamics["training"].views(), labels, [5, 10], num_classes=2):
            ...                                                 # (N, C) over epochs [0, stop)
    """
    if "probs" in dynamics:
        yield from _prefix_means(dynamics["probs"], stops)
        return
    for stop, x in _prefix_means(dynamics["prob_label"], stops):
        yield stop, _probs_from_prob_label(x, labels, num_classes)


def window_pred_probs(dynamics: Mapping[str, Sequence[np.ndarray]], labels: np.ndarray, window: ScoringWindow,
                      num_classes: int) -> np.ndarray:
    """Each item's class probabilities averaged over the window's epochs (an ensemble over time).

    Args:
        dynamics: field -> the field over epochs, as :meth:`lilaw_med.run.dynamics_format.Dynamics.views`
            (one epoch read at a time) or :meth:`~lilaw_med.run.dynamics_format.Dynamics.as_dict`
            (stacked) give: ``probs`` (E, N, C) when recorded; else (older runs) ``prob_label``
            (E, N), from which two-class probabilities are exact (``(1 - s[y], s[y])``) and more
            classes spread the rest evenly.
        labels: int (N,) given labels.
        window: the epochs to average.
        num_classes: C.

    Returns:
        float64 (N, C), rows summing to 1; NaN rows for items never seen in the window.

    Example::

        probs = window_pred_probs(record.dynamics["training"].views(), labels, window, num_classes=2)  # (N, C)
    """
    if "probs" in dynamics:
        return epoch_mean(dynamics["probs"][window.start:window.stop])
    x = epoch_mean(dynamics["prob_label"][window.start:window.stop])
    return _probs_from_prob_label(x, labels, num_classes)
