"""LiLAWLoss, the wrapper that weights any per-sample loss, the per-sample losses it can weight,
and their name -> factory table (:data:`BASE_LOSSES`, read by ``loss.name`` in a config).

Adding a loss is one :class:`BaseLoss` entry in :data:`BASE_LOSSES` (and, when it has a
parameter of its own, one field in the ``loss`` section of :mod:`lilaw_med.run.config`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lilaw_med.weighting import LiLAWTerms, LiLAWWeighting, label_agreement

__all__ = [
    "BASE_LOSSES",
    "BaseLoss",
    "BinaryBCELoss",
    "ClassWeightedLoss",
    "GCELoss",
    "LiLAWLoss",
    "LiLAWStats",
    "PerSampleFocalLoss",
    "SCELoss",
    "build_base_loss",
]

logger = logging.getLogger(__name__)

LiLAWStats = LiLAWTerms
"""Per-sample statistics kept by :class:`LiLAWLoss`: the weight terms plus ``loss`` (see below)."""


class LiLAWLoss(nn.Module):
    """Weights a per-sample loss by the LiLAW weight of each sample: ``mean_i(w_i * L_i)``.

    In the model step (this module's ``forward``), alpha, beta and delta are held constant.
    Until warm-up ends (``epoch <= warmup_epochs``) every weight is 1. The meta step
    (:class:`lilaw_med.handlers.LiLAWHandler`) calls :meth:`meta_loss` instead, which lets
    gradients reach the three scalars only.

    The statistics of the last TRAINING batch are kept in ``last_stats`` (and its per-sample
    base loss in ``last_loss``); the meta step's are kept apart in ``last_val_stats`` /
    ``last_val_loss`` and never overwrite them.

    Args:
        base_loss: a loss that returns unreduced values, e.g. ``nn.CrossEntropyLoss(reduction="none")``,
            ``nn.BCEWithLogitsLoss(reduction="none")`` or MONAI's ``FocalLoss(reduction="none")``.
        weighting: the three scalars; a fresh :class:`LiLAWWeighting` (spec defaults) when ``None``.
        warmup_epochs: epochs trained unweighted first (the weighting starts at ``epoch > warmup_epochs``).
            1, the authors' prototype's (its ``warmup = 0`` with epochs counted from 0): the first
            epoch trains unweighted and takes no meta step.
        reduce_classes: how a base loss that returns several values per sample ((N, C), as MONAI's
            FocalLoss or BCE over one-hot targets do) is reduced to one value per sample: ``"sum"``
            (the loss of the sample over its classes; for a softmax focal loss with one-hot
            targets only the labelled class is non-zero, so this is its value) or ``"mean"``.
            Required for such losses, ignored when the base loss already gives one value per sample.
        multi_label: outputs are independent labels (N, L) with 0/1 targets (N, L); the base loss
            must return (N, L) and the weight applies per (sample, label), with ``s = (1 - p, p)``
            per label.
        detach_weights: treat ``w`` as a constant in the model step (a pure reweighting). ``False``
            (the paper prototype's behaviour) lets the model gradient also flow through ``w``.
        normalize_weights: in the model step, divide the weights by their batch mean (detached):
            ``mean_i(w_i / mean_j(w_j) * L_i)``, so the loss keeps the base loss's scale. The
            spec's initial scalars put the weights near 2, so without it a ``mean`` loss, and its
            gradient, are about twice the base loss's: harmless with Adam/AdamW (invariant to a
            constant loss scale), a doubled step size with SGD. The mean is a constant of the
            step (detached), so only the relative weights shape the gradient. ``last_stats``
            keeps the raw weights; the meta step's objective is ``meta_objective``'s.
        meta_objective: what the meta step lowers over a validation batch. ``"mean"`` (the spec's):
            ``mean(w * L)``, lowered by lowering every weight, so alpha's and beta's gradients
            have one sign whatever the batch holds (alpha falls, beta rises) and the scalars' end point follows
            how far the steps take them. ``"normalized"``: ``sum(w * L) / sum(w)``, the weighted
            mean loss, invariant to a common scale of the weights; its gradient,
            ``sum(dw * (L - Lbar_w)) / sum(w)``, moves weight toward the items whose loss is below
            the weighted mean, in the direction the batch says.

    Raises:
        TypeError: when ``base_loss`` is not callable.
        ValueError: on an unknown ``reduce_classes`` or ``meta_objective``, or a negative ``warmup_epochs``.

    Example::

        loss_fn = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
        loss = loss_fn(logits, labels)   # mean_i(w_i * CE_i), alpha/beta/delta held constant
        loss_fn.set_epoch(2)             # the LiLAW handler does this at each epoch start
    """

    def __init__(
        self,
        base_loss: nn.Module,
        weighting: LiLAWWeighting | None = None,
        warmup_epochs: int = 1,
        reduce_classes: Literal["sum", "mean"] | None = None,
        multi_label: bool = False,
        detach_weights: bool = False,
        normalize_weights: bool = False,
        meta_objective: Literal["mean", "normalized"] = "mean",
    ):
        super().__init__()
        if not callable(base_loss):
            raise TypeError(f"base_loss must be callable but is {type(base_loss).__name__}.")
        if reduce_classes not in (None, "sum", "mean"):
            raise ValueError(f"reduce_classes must be 'sum', 'mean' or None but is {reduce_classes!r}.")
        if meta_objective not in ("mean", "normalized"):
            raise ValueError(f"meta_objective must be 'mean' or 'normalized' but is {meta_objective!r}.")
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0 but is {warmup_epochs}.")
        self.base_loss = base_loss
        self.weighting = weighting if weighting is not None else LiLAWWeighting()
        self.warmup_epochs = int(warmup_epochs)
        self.reduce_classes = reduce_classes
        self.multi_label = bool(multi_label)
        self.detach_weights = bool(detach_weights)
        self.normalize_weights = bool(normalize_weights)
        self.meta_objective = meta_objective
        self.epoch = 1
        self.last_stats: LiLAWStats | None = None
        self.last_loss: torch.Tensor | None = None
        self.last_val_stats: LiLAWStats | None = None
        self.last_val_loss: torch.Tensor | None = None

    @property
    def is_active(self) -> bool:
        """Whether the weighting applies now (``epoch > warmup_epochs``)."""
        return self.epoch > self.warmup_epochs

    def set_epoch(self, epoch: int) -> None:
        """Tells the loss the current (1-based) epoch, for warm-up. The handler calls it."""
        self.epoch = int(epoch)

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Calls the base loss and reduces its output to one value per sample (or per label).

        Args:
            pred: logits (N, C) or (N, 1).
            target: the labels the base loss expects.

        Returns:
            (N,) values, or (N, L) with ``multi_label``.

        Raises:
            ValueError: when the base loss reduces to a scalar, or returns several values per
                sample and ``reduce_classes`` is not set, or its batch size does not match.
        """
        values = self.base_loss(pred, target)
        if not isinstance(values, torch.Tensor) or values.ndim == 0:
            raise ValueError(
                f"base_loss {type(self.base_loss).__name__} returned a scalar; LiLAWLoss needs one value "
                "per sample: construct it with reduction='none'."
            )
        n = pred.shape[0]
        if values.shape[0] != n:
            raise ValueError(
                f"base_loss returned shape {tuple(values.shape)} for a batch of {n}: the first dimension "
                "must be the batch."
            )
        if self.multi_label:
            if values.shape != pred.shape:
                raise ValueError(
                    f"multi_label needs a base loss that returns (N, L)={tuple(pred.shape)} "
                    f"but it returned {tuple(values.shape)}."
                )
            return values
        if values.ndim == 1:
            return values
        per_sample = values.reshape(n, -1)
        if per_sample.shape[1] == 1:
            return per_sample[:, 0]
        if self.reduce_classes is None:
            raise ValueError(
                f"base_loss {type(self.base_loss).__name__} returned {tuple(values.shape)}, several values "
                "per sample: pass reduce_classes='sum' or 'mean' to say how they make one per-sample loss."
            )
        return per_sample.sum(dim=1) if self.reduce_classes == "sum" else per_sample.mean(dim=1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The model step's loss: ``mean(w * L)`` with alpha, beta, delta held constant
        (``mean(w / mean(w).detach() * L)`` with ``normalize_weights``).

        Args:
            pred: logits (N, C), (N, 1) or (N, L) with ``multi_label``.
            target: the labels the base loss expects (integer, one-hot or 0/1).

        Returns:
            The scalar weighted mean. Before warm-up ends, the plain mean of ``L``.
        """
        losses = self.per_sample_loss(pred, target)
        if self.is_active:
            terms = self.weighting(pred, target, multi_label=self.multi_label, detach_params=True)
            w = terms.weight.detach() if self.detach_weights else terms.weight
            w = w.to(losses.dtype)
            if self.normalize_weights:
                # a constant rescaling of the step: detached, so it does not add a gradient path
                # through the batch's other samples; clamped so all-zero weights give a zero loss
                w = w / w.detach().mean().clamp_min(torch.finfo(w.dtype).tiny)
            loss = (w * losses).mean()
        else:
            with torch.no_grad():
                terms = self.weighting(pred.detach(), target, multi_label=self.multi_label, detach_params=True)
            loss = losses.mean()
        self.last_stats = terms.detach()
        self.last_loss = losses.detach()
        return loss

    def meta_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The meta step's loss with the network's outputs held constant: ``mean(w * L)`` (the spec's)
        or, with ``meta_objective="normalized"``, ``sum(w * L) / sum(w)``.

        Gradients reach alpha, beta and delta only. Its statistics go to ``last_val_stats``.

        ``normalize_weights`` does not touch it: that divides by a detached mean, a matter of the
        network optimizer's step size; the normalised objective divides by ``sum(w)`` with the
        gradient through it, which changes the direction the scalars move.

        Args:
            pred: logits of a validation batch (detached here).
            target: its labels.

        Returns:
            The scalar weighted mean, differentiable w.r.t. the three scalars.
        """
        pred = pred.detach()
        with torch.no_grad():
            losses = self.per_sample_loss(pred, target).float()
        terms = self.weighting(pred, target, multi_label=self.multi_label)
        self.last_val_stats = terms.detach()
        self.last_val_loss = losses
        if self.meta_objective == "normalized":
            w = terms.weight
            return (w * losses).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
        return (terms.weight * losses).mean()


def _per_class_reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum' but is {reduction!r}.")


class GCELoss(nn.Module):
    """Generalized cross-entropy (Zhang and Sabuncu, NeurIPS 2018): ``L = (1 - s[y]^q) / q``.

    Args:
        q: the exponent in (0, 1]; 0.7 is the published default (q -> 0 gives CE, q = 1 MAE).
        reduction: ``"none"`` (per sample, for LiLAWLoss), ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: when ``q`` is outside (0, 1].

    Example::

        per_sample = GCELoss(q=0.7, reduction="none")(logits, labels)  # (N,), for LiLAWLoss
    """

    def __init__(self, q: float = 0.7, reduction: str = "mean"):
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"q must lie in (0, 1] but is {q}.")
        self.q = float(q)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred: logits (N, C) or one binary logit (N, 1); target: labels (N,), (N, 1) or one-hot."""
        x, _, _ = label_agreement(pred, target)
        return _per_class_reduce((1 - x.clamp_min(1e-7) ** self.q) / self.q, self.reduction)


class SCELoss(nn.Module):
    """Symmetric cross-entropy (Wang et al., ICCV 2019): ``alpha * CE + beta * RCE``.

    RCE is the reverse cross-entropy ``-sum_k s_k log y_k`` with ``log 0`` clipped to ``A = -4``,
    which for a hard label is ``-A * (1 - s[y])``.

    Args:
        alpha: weight of CE (published default 0.1).
        beta: weight of RCE (published default 1.0).
        log_zero: the clipped value ``A`` of ``log 0`` (published: -4).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Example::

        loss = SCELoss()(logits, labels)  # 0.1 * CE + 1.0 * RCE, averaged over the batch
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0, reduction: str = "mean"):
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.log_zero = float(log_zero)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred: logits (N, C) or one binary logit (N, 1); target: labels (N,), (N, 1) or one-hot."""
        x, _, _ = label_agreement(pred, target)
        ce = -torch.log(x.clamp_min(1e-7))
        rce = -self.log_zero * (1 - x)
        return _per_class_reduce(self.alpha * ce + self.beta * rce, self.reduction)



# ---------------------------------------------------------------------------------------- per-sample losses
class PerSampleFocalLoss(nn.Module):
    """MONAI's softmax focal loss, one value per sample: (N, C) logits and (N,) labels -> (N,).

    Args:
        gamma: the focusing parameter (0 gives cross-entropy).
        weight: (C,) class weights multiplying each sample's loss, or ``None``.
    """

    def __init__(self, gamma: float, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        # the core layer imports no MONAI: only the focal loss needs it
        from monai.losses import FocalLoss

        self.focal = FocalLoss(use_softmax=True, gamma=gamma, reduction="none")
        self.register_buffer("class_weight", weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred: logits (N, C); target: labels (N,) or (N, 1). Returns: (N,)."""
        y = target.reshape(-1).long()
        values = self.focal(pred, nn.functional.one_hot(y, pred.shape[1]).to(pred.dtype)).sum(dim=1)
        return values * self.class_weight[y] if self.class_weight is not None else values


class BinaryBCELoss(nn.Module):
    """BCE on one logit: (N, 1) logits and (N,) 0/1 labels -> (N,), optionally class-weighted.

    Args:
        weight: (2,) class weights multiplying each sample's loss, or ``None``.
    """

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("class_weight", weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred: one logit (N, 1) or (N,); target: 0/1 labels (N,). Returns: (N,)."""
        y = target.reshape(-1)
        values = nn.functional.binary_cross_entropy_with_logits(pred.reshape(-1), y.to(pred.dtype), reduction="none")
        return values * self.class_weight[y.long()] if self.class_weight is not None else values


class ClassWeightedLoss(nn.Module):
    """Multiplies a per-sample loss by the weight of each sample's class.

    Args:
        base: a per-sample loss (``reduction="none"``) mapping (logits, labels (N,)) to (N,).
        weight: (C,) class weights.
    """

    def __init__(self, base: nn.Module, weight: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("class_weight", weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred: logits (N, C); target: labels (N,). Returns: (N,)."""
        return self.base(pred, target) * self.class_weight[target.reshape(-1).long()]


# ---------------------------------------------------------------------------------------- the table
LossFactory = Callable[[Mapping[str, Any], torch.Tensor | None, bool], nn.Module]


@dataclass(frozen=True)
class BaseLoss:
    """One per-sample loss that :class:`LiLAWLoss` can weight.

    Attributes:
        build: ``build(options, class_weights, multi_label)`` -> a module mapping (logits, labels)
            to per-sample losses (N,) ((N, L) for multi-label); ``options`` is the config's ``loss``
            section, ``class_weights`` (C,) or ``None``.
        single_logit: a binary single-label task is trained with ONE output logit (sigmoid) instead
            of one per class (so it needs exactly 2 classes).
        multi_label: the loss takes (N, L) logits with 0/1 targets.
    """

    build: LossFactory
    single_logit: bool = False
    multi_label: bool = False

    def num_outputs(self, num_classes: int, multi_label: bool) -> int:
        """The network's outputs for this loss: one logit for a single-logit loss on a binary
        single-label task, else one per class (per label for multi-label)."""
        return 1 if self.single_logit and not multi_label else num_classes


def _class_weighted(base: nn.Module, class_weights: torch.Tensor | None) -> nn.Module:
    return ClassWeightedLoss(base, class_weights) if class_weights is not None else base


def _bce(options: Mapping[str, Any], class_weights: torch.Tensor | None, multi_label: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss(reduction="none") if multi_label else BinaryBCELoss(class_weights)


BASE_LOSSES: dict[str, BaseLoss] = {
    "ce": BaseLoss(lambda o, w, m: nn.CrossEntropyLoss(weight=w, reduction="none")),
    "focal": BaseLoss(lambda o, w, m: PerSampleFocalLoss(o["focal_gamma"], w)),
    "bce": BaseLoss(_bce, single_logit=True, multi_label=True),
    "gce": BaseLoss(lambda o, w, m: _class_weighted(GCELoss(q=o["gce_q"], reduction="none"), w)),
    "sce": BaseLoss(
        lambda o, w, m: _class_weighted(SCELoss(alpha=o["sce_alpha"], beta=o["sce_beta"], reduction="none"), w)
    ),
}
"""Per-sample losses by the name ``loss.name`` gives them."""


def build_base_loss(
    name: str, options: Mapping[str, Any], class_weights: torch.Tensor | None = None, multi_label: bool = False
) -> nn.Module:
    """The per-sample (unreduced) loss called ``name`` in :data:`BASE_LOSSES`.

    Args:
        name: a key of :data:`BASE_LOSSES` (``loss.name``).
        options: the config's ``loss`` section (the loss's own parameters, e.g. ``focal_gamma``).
        class_weights: (C,) weights per class, or ``None``.
        multi_label: (N, L) logits with 0/1 targets.

    Returns:
        A module mapping (logits, labels) to per-sample losses (N,) ((N, L) for multi-label).

    Raises:
        ValueError: on an unknown name, or a multi-label task with a loss that does not take one.
    """
    entry = BASE_LOSSES.get(name)
    if entry is None:
        raise ValueError(f"loss must be one of {sorted(BASE_LOSSES)} but is {name!r}.")
    if multi_label and not entry.multi_label:
        raise ValueError(f"loss {name!r} does not take multi-label targets; use one of {_multi_label_names()}.")
    return entry.build(options, class_weights, multi_label)


def _multi_label_names() -> list[str]:
    return [n for n, e in BASE_LOSSES.items() if e.multi_label]
