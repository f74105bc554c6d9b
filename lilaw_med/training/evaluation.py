"""Evaluation: metrics over logits, calibration (temperature, binary threshold, class-prior correction), inference.

Pure functions over arrays (cleanlab/sklearn style) plus :func:`run_inference`, which runs a network
over a loader (MONAI's ``eval_mode`` and ``default_prepare_batch``) and returns the logits, labels and ids.
scikit-learn loads inside the metric functions and no ignite engine is built, so ``predict``
(probabilities only) imports neither.

Tasks:
    * single-label with C >= 2 outputs: softmax probabilities (N, C);
    * binary with one logit (N, 1): ``p = sigmoid(z)``, probabilities ``(1 - p, p)``;
    * multi-label (N, L) logits with 0/1 labels (N, L): one sigmoid per label.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lilaw_med.weighting import class_probabilities

__all__ = [
    "LOWER_IS_BETTER",
    "apply_calibration",
    "calibration_args",
    "choose_class_bias",
    "choose_threshold",
    "classification_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "is_better",
    "probabilities",
    "run_inference",
]

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = frozenset({"loss", "ece"})


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for ``metric`` (``loss``/``ece`` lower, others higher; NaN never)."""
    if new is None or not math.isfinite(new):
        return False
    if best is None or not math.isfinite(best):
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


def probabilities(logits: torch.Tensor | np.ndarray, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
    """Class probabilities from logits, after dividing by ``temperature``.

    Args:
        logits: (N, C) with C >= 2, (N, 1) single binary logit, or (N, L) with ``multi_label``.
        temperature: positive scale of the logits.
        multi_label: independent sigmoids.

    Returns:
        float64 array (N, C) (C = 2 for a single logit) or, with ``multi_label``, (N, L) of P(label = 1).
    """
    z = torch.as_tensor(logits, dtype=torch.float64) / float(temperature)
    s = class_probabilities(z, multi_label=multi_label)
    return (s[..., 1] if multi_label else s).numpy()


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over bins of the top-class confidence.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        n_bins: number of bins on [0, 1].

    Returns:
        The ECE in [0, 1]; NaN for an empty input.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # bin b holds conf in (b/n, (b+1)/n]; conf == 0 goes to the first bin
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, multi_label: bool = False) -> float:
    """Fits the temperature ``T`` minimising the negative log-likelihood of ``labels`` (Guo et al. 2017).

    Optimised over ``log T`` with L-BFGS, so ``T`` stays positive.

    Args:
        logits: (N, C), (N, 1) or (N, L) with ``multi_label``.
        labels: (N,) integer labels, or (N, L) 0/1 for ``multi_label``.
        multi_label: independent sigmoids.

    Returns:
        The temperature (1.0 when the input is empty or the fit is not finite).
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels))
    if z.shape[0] == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        zt = z / log_t.exp()
        if multi_label or zt.shape[1] == 1:
            target = y.to(torch.float64).reshape(zt.shape)
            loss = nn.functional.binary_cross_entropy_with_logits(zt, target)
        else:
            loss = nn.functional.cross_entropy(zt, y.long().reshape(-1))
        loss.backward()
        return loss

    opt.step(nll)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def choose_threshold(prob_positive: np.ndarray, labels: np.ndarray) -> float:
    """The decision threshold on P(class 1) maximising balanced accuracy (Youden's J) on a split.

    The candidates are the midpoints between neighbouring distinct scores and 0.5: a threshold never
    sits exactly on a score, so the decision is stable under float round-off (logits ->
    probabilities). Ties (within 1e-12) keep the candidate closest to 0.5, the lower one when two
    are equally close. Balanced accuracy at every candidate comes from counts over the sorted
    scores, ``(TN / N_neg + TP / N_pos) / 2`` in scikit-learn's order of operations, so the result
    equals ``balanced_accuracy_score`` evaluated candidate by candidate in O(n log n) instead of
    O(n^2).

    Example::

        >>> choose_threshold(np.array([0.1, 0.2, 0.3, 0.9]), np.array([0, 0, 1, 1]))
        0.25

    Args:
        prob_positive: (N,) probabilities of class 1.
        labels: (N,) 0/1 labels.

    Returns:
        The threshold (0.5 when only one class is present).

    Raises:
        ValueError: when the two arrays differ in length or a label is not 0 or 1.
    """
    p = np.asarray(prob_positive, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(int)
    if len(p) != len(y):
        raise ValueError(f"prob_positive holds {len(p)} scores but labels holds {len(y)}.")
    if len(y) and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"labels must be 0 or 1, got values in [{y.min()}, {y.max()}].")
    num_pos = int(y.sum())
    num_neg = len(y) - num_pos
    if num_pos == 0 or num_neg == 0:
        return 0.5
    u = np.unique(p)
    candidates = np.unique(np.concatenate([(u[:-1] + u[1:]) / 2, [0.5]]))
    # items predicted positive at t are those with p >= t (NaN never is); searchsorted on the sorted
    # non-NaN scores counts them exactly, whatever the midpoint rounded to
    pos = np.sort(p[(y == 1) & ~np.isnan(p)])
    neg = np.sort(p[(y == 0) & ~np.isnan(p)])
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    tn = num_neg - (len(neg) - np.searchsorted(neg, candidates, side="left"))
    return _best_threshold(candidates, (tn / num_neg + tp / num_pos) / 2)


def _best_threshold(candidates: np.ndarray, scores: np.ndarray) -> float:
    """The tie rule of :func:`choose_threshold`: it compares each candidate with the best so far in
    increasing order (with a tolerance, so not a plain argmax); one pass of scalar comparisons keeps it exactly."""
    best_t, best_score = 0.5, -1.0
    for t, score in zip(candidates.tolist(), scores.tolist(), strict=True):
        if score > best_score + 1e-12 or (abs(score - best_score) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_score = t, score
    return float(best_t)


PRIOR_STRENGTHS = tuple(round(0.1 * i, 1) for i in range(21))
"""The strengths tau tried by :func:`choose_class_bias`: 0 (no correction) to 2 in steps of 0.1."""


def choose_class_bias(
    logits: np.ndarray | torch.Tensor, labels: np.ndarray, temperature: float = 1.0,
    strengths: Sequence[float] = PRIOR_STRENGTHS,
) -> tuple[list[float], float]:
    """A class-prior correction of single-label logits that maximises balanced accuracy on a split.

    Post-hoc logit adjustment (Menon et al., ICLR 2021): the predicted class is
    ``argmax_k(z_k - tau * log(prior_k))`` on the raw logits ``z``, with ``prior`` the split's label
    frequencies (add-one smoothed) and one strength ``tau`` chosen from ``strengths`` by balanced
    accuracy (ties: the smallest tau). A network trained on imbalanced labels favours the frequent
    classes; tau = 1 undoes that prior exactly, as balanced accuracy asks. One scalar is fitted, so
    a few hundred noisy validation items are enough. Under symmetric noise the noisy balanced
    accuracy of a classifier is an increasing affine function of its clean one
    (``(1 - r K / (K - 1)) BA + r / (K - 1)``), so the maximiser is the same; with class-dependent
    noise it is approximate (docs/method.md). The returned bias is scaled by ``1 / temperature``,
    so that ``logits / temperature + class_bias = (logits - tau * log prior) / temperature``: the
    temperature changes the probabilities, never the decision or the choice of tau.

    Args:
        logits: (N, C) logits, C >= 2.
        labels: (N,) integer labels of the split (may be noisy).
        temperature: the temperature the bias will be applied with (see :func:`apply_calibration`).
        strengths: the candidate values of tau.

    Returns:
        ``(class_bias, tau)``: the (C,) bias added to ``logits / temperature`` and the chosen tau.

    Raises:
        ValueError: when the logits are not (N, C >= 2) or the labels do not match them.
    """
    z = np.asarray(torch.as_tensor(np.asarray(logits), dtype=torch.float64))
    y = np.asarray(labels).reshape(-1).astype(int)
    if z.ndim != 2 or z.shape[1] < 2 or len(y) != len(z):
        raise ValueError(f"class-prior correction needs (N, C >= 2) logits and N labels, got {z.shape} and {len(y)}.")
    num_classes = z.shape[1]
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{y.min()}, {y.max()}].")
    log_prior = np.log((np.bincount(y, minlength=num_classes) + 1.0) / (len(y) + num_classes))
    if len(np.unique(y)) < 2:
        return [0.0] * num_classes, 0.0
    best_tau = _best_strength(z, y, log_prior, strengths)
    return [float(-best_tau * v / float(temperature)) for v in log_prior], best_tau


def _best_strength(z: np.ndarray, y: np.ndarray, log_prior: np.ndarray, strengths: Sequence[float]) -> float:
    """The smallest tau of ``strengths`` whose corrected argmax has the highest balanced accuracy."""
    # predict computes no metrics and runs without scikit-learn (lilaw_med.lean)
    from sklearn.metrics import balanced_accuracy_score

    best_tau, best_score = 0.0, -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from the split
        for tau in sorted(float(t) for t in strengths):
            score = balanced_accuracy_score(y, (z - tau * log_prior).argmax(axis=1))
            if score > best_score + 1e-12:
                best_tau, best_score = tau, score
    return best_tau


def calibration_args(calibration: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of :func:`apply_calibration` / :func:`classification_metrics` for a fitted
    calibration (a run summary's ``calibration[which]``; ``None`` or ``{}``: uncalibrated).

    Args:
        calibration: ``{"temperature", "threshold", "class_bias", ...}`` as written by training.

    Returns:
        ``{"temperature", "threshold", "class_bias"}`` (temperature 1.0 when unset).
    """
    cal = calibration or {}
    return {"temperature": cal.get("temperature") or 1.0, "threshold": cal.get("threshold"),
            "class_bias": cal.get("class_bias")}


def apply_calibration(
    logits: np.ndarray | torch.Tensor, temperature: float = 1.0, threshold: float | None = None, multi_label: bool = False,
    class_bias: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and predicted classes after calibration.

    Args:
        logits: see :func:`probabilities`.
        temperature: divides the logits.
        threshold: binary only: predict class 1 when P(class 1) >= threshold (default argmax / 0.5).
        multi_label: independent sigmoids (threshold applies per label).
        class_bias: single-label (N, C >= 2) only: added to ``logits / temperature`` (see
            :func:`choose_class_bias`). The probabilities are then those of a balanced class prior,
            not of the training data's class frequencies (their loss and ECE against imbalanced
            labels are usually worse; their argmax is what balanced accuracy asks for).

    Returns:
        ``(probs, predicted)``: (N, C) and (N,) for single-label; (N, L) and (N, L) for multi-label.

    Raises:
        ValueError: when ``class_bias`` does not match the logits' classes.
    """
    if class_bias is not None and not multi_label:
        z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / float(temperature)
        bias = torch.as_tensor(np.asarray(class_bias, dtype=np.float64))
        if z.ndim != 2 or bias.shape != (z.shape[1],) or z.shape[1] < 2:
            raise ValueError(f"class_bias of shape {tuple(bias.shape)} does not fit logits of shape {tuple(z.shape)}.")
        logits, temperature = z + bias, 1.0
    probs = probabilities(logits, temperature, multi_label)
    if multi_label:
        return probs, (probs >= (0.5 if threshold is None else threshold)).astype(int)
    if threshold is not None and probs.shape[1] == 2:
        return probs, (probs[:, 1] >= threshold).astype(int)
    return probs, probs.argmax(axis=1)


def _auroc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    # predict computes no metrics and runs without scikit-learn (lilaw_med.lean)
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if num_classes == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        if len(present) < num_classes:  # macro one-vs-rest over the classes present
            scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
            return float(np.mean(scores))
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def classification_metrics(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    multi_label: bool = False,
    n_bins: int = 15,
    class_bias: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every evaluation metric of a split.

    Args:
        logits: (N, C), (N, 1) single binary logit, or (N, L) with ``multi_label``.
        labels: (N,) integer labels, or (N, L) 0/1 with ``multi_label``.
        class_names: names for the per-class entries (default ``"0"``, ``"1"``, ...).
        temperature: applied to the logits before everything.
        threshold: binary decision threshold on P(class 1) (default: argmax).
        multi_label: per-label metrics averaged over labels.
        n_bins: ECE bins.
        class_bias: single-label class-prior correction (see :func:`apply_calibration`); the loss
            and ECE are then those of the corrected probabilities.

    Returns:
        ``{"n", "accuracy", "balanced_accuracy", "auroc", "ece", "loss", "per_class": {name:
        {"precision", "recall", "support"}}, "confusion_matrix": [[...]] (rows = true)}``;
        undefined values (e.g. AUROC with one class present) are NaN.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = np.asarray(labels)
    n = int(z.shape[0])
    probs, pred = apply_calibration(z, temperature, threshold, multi_label, class_bias)
    zt = z / temperature
    if class_bias is not None and not multi_label:
        zt = zt + torch.as_tensor(np.asarray(class_bias, dtype=np.float64))
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "auroc": float("nan"),
                "ece": float("nan"), "loss": float("nan"), "per_class": {}, "confusion_matrix": []}
    if multi_label:
        return _multi_label_metrics(zt, y.reshape(n, -1).astype(int), probs, pred, class_names, n_bins)
    return _single_label_metrics(zt, y.reshape(-1).astype(int), probs, pred, class_names, n_bins)


def _multi_label_metrics(
    zt: torch.Tensor, y: np.ndarray, probs: np.ndarray, pred: np.ndarray, class_names: Sequence[str] | None,
    n_bins: int,
) -> dict[str, Any]:
    """:func:`classification_metrics` of multi-label outputs: per-label metrics averaged over labels.

    Args:
        zt: (N, L) calibrated logits; ``y``, ``probs``, ``pred``: (N, L).
    """
    # predict computes no metrics and runs without scikit-learn (lilaw_med.lean)
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    n, num = y.shape
    names = list(class_names) if class_names else [str(i) for i in range(num)]
    loss = float(nn.functional.binary_cross_entropy_with_logits(zt, torch.as_tensor(y, dtype=torch.float64)))
    per_class: dict[str, dict[str, float]] = {}
    aurocs, baccs = [], []
    for j, name in enumerate(names):
        two = np.stack([1 - probs[:, j], probs[:, j]], axis=1)
        aurocs.append(_auroc(y[:, j], two, 2))
        baccs.append(balanced_accuracy_score(y[:, j], pred[:, j]) if len(np.unique(y[:, j])) > 1 else float("nan"))
        p, r, _, s = precision_recall_fscore_support(y[:, j], pred[:, j], labels=[1], zero_division=0)
        per_class[name] = {"precision": float(p[0]), "recall": float(r[0]), "support": int(s[0])}
    eces = [expected_calibration_error(np.stack([1 - probs[:, j], probs[:, j]], 1), y[:, j], n_bins) for j in range(num)]
    return {
        "n": n,
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.nanmean(baccs)) if not all(map(math.isnan, baccs)) else float("nan"),
        "auroc": float(np.nanmean(aurocs)) if not all(map(math.isnan, aurocs)) else float("nan"),
        "ece": float(np.mean(eces)),
        "loss": loss,
        "per_class": per_class,
        "confusion_matrix": [],
    }


def _single_label_metrics(
    zt: torch.Tensor, y: np.ndarray, probs: np.ndarray, pred: np.ndarray, class_names: Sequence[str] | None,
    n_bins: int,
) -> dict[str, Any]:
    """:func:`classification_metrics` of single-label outputs.

    Args:
        zt: (N, C) or (N, 1) calibrated logits; ``y``, ``pred``: (N,); ``probs``: (N, C).
    """
    # predict computes no metrics and runs without scikit-learn (lilaw_med.lean)
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    n, num_classes = len(y), probs.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if zt.shape[1] == 1:
        loss = float(nn.functional.binary_cross_entropy_with_logits(zt[:, 0], torch.as_tensor(y, dtype=torch.float64)))
    else:
        loss = float(nn.functional.cross_entropy(zt, torch.as_tensor(y, dtype=torch.long)))
    class_ids = list(range(num_classes))
    prec, rec, _, support = precision_recall_fscore_support(y, pred, labels=class_ids, zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a class is absent from y
        bacc = float(balanced_accuracy_score(y, pred))
    return {
        "n": n,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": bacc,
        "auroc": _auroc(y, probs, num_classes),
        "ece": expected_calibration_error(probs, y, n_bins),
        "loss": loss,
        "per_class": {
            names[c]: {"precision": float(prec[c]), "recall": float(rec[c]), "support": int(support[c])}
            for c in class_ids
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=class_ids).tolist(),
    }


def run_inference(
    network: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    amp: bool = False,
    prepare_batch: Callable | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Runs ``network`` over ``loader`` without gradients and collects its outputs.

    The forward of MONAI's ``SupervisedEvaluator`` (``eval_mode``: eval mode and ``no_grad``, the
    network's own mode restored afterwards; ``autocast`` on CUDA with ``amp``), as a plain loop: an
    ignite engine would import ignite (and through it ``torch.distributed``'s sympy), which the
    ``predict`` command does not need.

    Args:
        network: the classifier (in eval mode for the loop, then back in its own mode).
        loader: batches of dicts with ``"image"``, optionally ``"label"`` and ``"id"``.
        device: where to run.
        amp: autocast the forward (CUDA).
        prepare_batch: MONAI-style ``prepare_batch(batch, device, non_blocking)`` returning
            ``(image, label)`` (default: MONAI's ``default_prepare_batch``).
        channels_last: convert 4-D inputs to channels-last memory format.

    Returns:
        ``(logits, labels, ids)``: float32 logits (N, K) on CPU; labels (N,) or (N, L) on CPU, or
        ``None`` when the batches hold no labels; the item ids (``""`` when absent).
    """
    # predict runs inference without monai.engines, which imports ignite (lilaw_med.lean)
    from monai.engines.utils import default_prepare_batch
    from monai.networks.utils import eval_mode

    prepare = prepare_batch or default_prepare_batch
    device = torch.device(device)
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    ids: list[str] = []
    with eval_mode(network):
        for batch in loader:
            image, label = prepare(batch, device, False)[:2]
            pred = _forward(network, image, amp, channels_last)
            logits.append(pred.detach().float().cpu())
            if isinstance(label, torch.Tensor):
                labels.append(label.detach().cpu())
            ids.extend(_item_ids(batch, pred.shape[0]))
    all_logits = torch.cat(logits) if logits else torch.zeros(0, 1)
    all_labels = torch.cat(labels) if labels and len(labels) == len(logits) else None
    return all_logits, all_labels, ids


def _forward(network: nn.Module, image: torch.Tensor, amp: bool, channels_last: bool) -> torch.Tensor:
    """The network's output for one batch, channels-last and autocast as asked."""
    if channels_last and image.ndim == 4:
        image = image.contiguous(memory_format=torch.channels_last)
    if amp:
        with torch.autocast("cuda"):
            return network(image)
    return network(image)


def _item_ids(batch: Any, n: int) -> list[str]:
    """The batch's item ids (``""`` for each of its ``n`` items when it has none)."""
    batch_ids = batch.get("id") if isinstance(batch, dict) else None
    return [str(i) for i in batch_ids] if batch_ids is not None else [""] * n
