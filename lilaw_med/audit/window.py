"""Which epochs of a run tell the truth about its labels, and the class probabilities they give.

A network fits the consistent part of its labels first and memorises the wrong ones later;
once memorised, a wrong label looks as confident as a right one. The audit therefore reads each
item's class probabilities over a *scoring window*: the epochs up to the point where memorisation
begins. That point is read off the run itself, without clean labels: the validation items are
never trained on, so their (noisy) loss stops falling when the network starts fitting noise
rather than signal. A fixed share of the epochs (the first audit's rule) fails both ways: too
early for a short run that has not learnt yet, too late for a long one.

Pure functions over arrays (no I/O, no torch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["LOSS_RULES", "WINDOW_RULES", "ScoringWindow", "choose_window", "epoch_mean", "window_pred_probs"]

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
* ``"fraction"``: the first ``ceil(fraction * E)`` epochs (the first audit's rule, fraction 0.2).
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
        ValueError: on an unknown rule, ``n_epochs < 1`` or a curve of the wrong length.
    """
    if rule not in WINDOW_RULES:
        raise ValueError(f"rule must be one of {WINDOW_RULES} but is {rule!r}.")
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be at least 1 but is {n_epochs}.")
    if rule == "all":
        return ScoringWindow(0, n_epochs, rule, f"every recorded epoch (1-{n_epochs})")
    if rule == "last":
        return ScoringWindow(n_epochs - 1, n_epochs, rule, f"the last epoch ({n_epochs})")
    if rule == "fraction":
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1] but is {fraction}.")
        stop = max(1, math.ceil(fraction * n_epochs - 1e-9))
        return ScoringWindow(0, stop, rule, f"the first {stop} of {n_epochs} epochs ({fraction:g} of training)")
    if rule == "val_loss_at_least_fraction":
        by_loss = choose_window(n_epochs, "best_val_loss", val_loss=val_loss)
        floor = choose_window(n_epochs, "fraction", fraction=fraction)
        if by_loss.rule != "best_val_loss" or by_loss.stop >= floor.stop:
            return by_loss
        return ScoringWindow(0, floor.stop, rule, f"epochs 1-{floor.stop} of {n_epochs}: the noisy validation loss was best "
                             f"at epoch {by_loss.stop}, earlier than the first {fraction:g} of training, which is kept")
    curve, what, lower = (val_loss, "loss", True) if rule == "best_val_loss" else (val_accuracy, "accuracy", False)
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


def epoch_mean(a: np.ndarray) -> np.ndarray:
    """The mean over axis 0 (epochs) ignoring NaN (epochs an item was not seen); NaN for never seen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an item not seen in the window: NaN
        return np.nanmean(a, axis=0)


def window_pred_probs(dynamics: Mapping[str, np.ndarray], labels: np.ndarray, window: ScoringWindow,
                      num_classes: int) -> np.ndarray:
    """Each item's class probabilities averaged over the window's epochs (an ensemble over time).

    Args:
        dynamics: field -> array, as :meth:`lilaw_med.run.dynamics_format.Dynamics.as_dict` gives:
            ``probs`` (E, N, C) when recorded; else (older runs) ``prob_label`` (E, N), from which
            two-class probabilities are exact (``(1 - s[y], s[y])``) and more classes spread the
            rest evenly.
        labels: int (N,) given labels.
        window: the epochs to average.
        num_classes: C.

    Returns:
        float64 (N, C), rows summing to 1; NaN rows for items never seen in the window.
    """
    y = np.asarray(labels, dtype=np.int64)
    if "probs" in dynamics:
        p = np.asarray(dynamics["probs"], dtype=np.float64)[window.start:window.stop]
        return epoch_mean(p)
    x = epoch_mean(np.asarray(dynamics["prob_label"], dtype=np.float64)[window.start:window.stop])
    rest = (1 - x) / max(num_classes - 1, 1)
    out = np.repeat(rest[:, None], num_classes, axis=1)
    out[np.arange(y.size), y] = x
    return out
