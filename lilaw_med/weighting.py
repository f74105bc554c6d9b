"""The LiLAW weight function: the spec's math, and nothing else (no MONAI, no I/O).

For a sample with class probabilities ``s`` and observed label ``y``:

* ``x = s[y]`` (agreement with the given label), ``m = max(s)``;
* ``W_alpha = sigmoid(alpha * x - m)`` ("easy"), ``W_beta = sigmoid(-(beta * x - m))`` ("hard"),
  ``W_delta = exp(-(delta * x - m)^2 / 2)`` ("moderate");
* ``w = W_alpha + W_beta + W_delta``.

Every other module calls :func:`lilaw_terms` / :func:`lilaw_weights`; the formulas live here only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

__all__ = [
    "LiLAWTerms",
    "LiLAWWeighting",
    "class_probabilities",
    "label_agreement",
    "lilaw_terms",
    "lilaw_weights",
]


@dataclass
class LiLAWTerms:
    """Per-sample quantities of the weight function; every field has the shape of ``weight``.

    Attributes:
        prob_label: ``x = s[y]``, the probability given to the observed label.
        prob_max: ``m = max(s)``, the probability of the top class.
        pred_label: the top class (``argmax s``; 0/1 per label in the multi-label case).
        w_alpha: the "easy" term ``sigmoid(alpha * x - m)``.
        w_beta: the "hard" term ``sigmoid(-(beta * x - m))``.
        w_delta: the "moderate" term ``exp(-(delta * x - m)^2 / 2)``.
        weight: ``w_alpha + w_beta + w_delta``.
    """

    prob_label: torch.Tensor
    prob_max: torch.Tensor
    pred_label: torch.Tensor
    w_alpha: torch.Tensor
    w_beta: torch.Tensor
    w_delta: torch.Tensor
    weight: torch.Tensor

    def detach(self) -> LiLAWTerms:
        """Returns a copy whose tensors are detached from the autograd graph."""
        return LiLAWTerms(**{f.name: getattr(self, f.name).detach() for f in fields(self)})


def class_probabilities(pred: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Turns logits into class probabilities ``s``, in float32 or wider.

    Args:
        pred: logits of shape (N, C) with C >= 2 (softmax over C), or a single binary logit of
            shape (N, 1) or (N,) (``s = (1 - p, p)`` with ``p = sigmoid(z)``). With
            ``multi_label=True``, (N, L) independent logits, one per label.
        multi_label: treat each column as its own binary problem.

    Returns:
        (N, C) probabilities for single-label input; (N, L, 2) for ``multi_label``.

    Raises:
        ValueError: when ``pred`` is not 1-D or 2-D.
    """
    if pred.ndim == 1:
        pred = pred.unsqueeze(1)
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape (N, C) or (N,) but has shape {tuple(pred.shape)}.")
    z = pred if pred.dtype in (torch.float32, torch.float64) else pred.float()
    if multi_label:
        p = torch.sigmoid(z)
        return torch.stack([1 - p, p], dim=-1)
    if z.shape[1] == 1:
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(z, dim=1)


def _label_indices(target: torch.Tensor, num_classes: int, n: int) -> torch.Tensor | None:
    """Integer labels of shape (N,) from (N,), (N, 1) or one-hot (N, C); ``None`` for soft labels."""
    if target.ndim == 2 and target.shape[1] == num_classes and num_classes > 1:
        return None  # one-hot or soft: handled as a dot product
    t = target.reshape(-1)
    if t.numel() != n:
        raise ValueError(
            f"target must have shape (N,), (N, 1) or (N, C) with N={n}, C={num_classes} "
            f"but has shape {tuple(target.shape)}."
        )
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("integer class labels were expected but target holds non-integer values.")
        t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] but range over [{int(t.min())}, {int(t.max())}]."
        )
    return t.long()


def label_agreement(
    pred: torch.Tensor, target: torch.Tensor, multi_label: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Computes ``x = s[y]``, ``m = max(s)`` and the predicted class.

    Args:
        pred: logits, see :func:`class_probabilities`.
        target: integer labels (N,) or (N, 1), one-hot or soft labels (N, C) (then
            ``x = <s, y>``), or 0/1 labels for a single binary logit. With ``multi_label``,
            0/1 labels of shape (N, L).
        multi_label: per-(sample, label) agreement with ``s = (1 - p, p)`` per label.

    Returns:
        ``(x, m, predicted)``, each of shape (N,), or (N, L) with ``multi_label``.

    Raises:
        ValueError: when shapes do not match or labels lie outside the classes.
    """
    s = class_probabilities(pred, multi_label=multi_label)
    if multi_label:
        if target.shape != s.shape[:2]:
            raise ValueError(
                f"multi-label target must have the shape of pred {tuple(s.shape[:2])} "
                f"but has shape {tuple(target.shape)}."
            )
        y = target.to(s.dtype)
        x = s[..., 1] * y + s[..., 0] * (1 - y)
        m, predicted = s.max(dim=-1)
        return x, m, predicted
    n, c = s.shape
    idx = _label_indices(target, c, n)
    if idx is None:
        x = (s * target.to(s.dtype)).sum(dim=1)
    else:
        x = s.gather(1, idx.unsqueeze(1)).squeeze(1)
    m, predicted = s.max(dim=1)
    return x, m, predicted


def lilaw_terms(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor | float,
    beta: torch.Tensor | float,
    delta: torch.Tensor | float,
    multi_label: bool = False,
) -> LiLAWTerms:
    """Computes every term of the LiLAW weight (see the module docstring).

    Gradients flow to ``alpha``, ``beta``, ``delta`` and, through ``x`` and ``m``, to ``pred``;
    callers detach what they want held constant.

    Args:
        pred: logits, see :func:`class_probabilities`.
        target: labels, see :func:`label_agreement`.
        alpha: the "easy" scalar.
        beta: the "hard" scalar.
        delta: the "moderate" scalar.
        multi_label: per-(sample, label) weights.

    Returns:
        The terms, each of shape (N,), or (N, L) with ``multi_label``.
    """
    x, m, predicted = label_agreement(pred, target, multi_label=multi_label)
    w_alpha = torch.sigmoid(alpha * x - m)
    w_beta = torch.sigmoid(-(beta * x - m))
    w_delta = torch.exp(-((delta * x - m) ** 2) / 2)
    return LiLAWTerms(x, m, predicted, w_alpha, w_beta, w_delta, w_alpha + w_beta + w_delta)


def lilaw_weights(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor | float,
    beta: torch.Tensor | float,
    delta: torch.Tensor | float,
    multi_label: bool = False,
) -> torch.Tensor:
    """The per-sample LiLAW weight ``w = W_alpha + W_beta + W_delta``.

    Args:
        pred: logits (N, C); or one binary logit (N, 1) / (N,) with 0/1 labels.
        target: integer labels (N,) or (N, 1), or one-hot (N, C).
        alpha: the "easy" scalar (float or 0-d tensor).
        beta: the "hard" scalar.
        delta: the "moderate" scalar.
        multi_label: (N, L) logits and 0/1 labels; one weight per (sample, label).

    Returns:
        Weights of shape (N,) (or (N, L) with ``multi_label``), each in (0, 3).

    Example::

        logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
        w = lilaw_weights(logits, labels, alpha=2.0, beta=2.0, delta=2.0)  # (8,)
    """
    return lilaw_terms(pred, target, alpha, beta, delta, multi_label=multi_label).weight


class LiLAWWeighting(nn.Module):
    """The three learnable scalars of LiLAW and their clamps.

    Args:
        alpha: initial value of the "easy" scalar (spec default 2.0).
        beta: initial value of the "hard" scalar (spec default 2.0).
        delta: initial value of the "moderate" scalar (spec default 2.0).
        alpha_min: lower clamp of ``alpha`` (spec: 1.0).

    Raises:
        ValueError: when an initial value is not finite or violates the clamps.

    Example::

        weighting = LiLAWWeighting()               # alpha = beta = delta = 2, alpha_min = 1
        terms = weighting(logits, labels)          # LiLAWTerms; terms.weight is (N,)
        weighting.clamp_()                         # after each meta step
    """

    def __init__(self, alpha: float = 2.0, beta: float = 2.0, delta: float = 2.0, alpha_min: float = 1.0):
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta), ("delta", delta), ("alpha_min", alpha_min)):
            if not torch.isfinite(torch.tensor(float(value))):
                raise ValueError(f"{name} must be finite but is {value}.")
        if alpha < alpha_min:
            raise ValueError(f"alpha must be >= alpha_min={alpha_min} but is {alpha}.")
        if delta < beta:
            raise ValueError(f"delta must be >= beta={beta} but is {delta}.")
        self.alpha_min = float(alpha_min)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.delta = nn.Parameter(torch.tensor(float(delta)))

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, multi_label: bool = False, detach_params: bool = False
    ) -> LiLAWTerms:
        """Computes the weight terms for a batch.

        Args:
            pred: logits, see :func:`lilaw_weights`.
            target: labels, see :func:`lilaw_weights`.
            multi_label: per-(sample, label) weights.
            detach_params: hold alpha, beta, delta constant (the model step of the spec).

        Returns:
            The :class:`LiLAWTerms` of the batch.
        """
        a, b, d = self.alpha, self.beta, self.delta
        if detach_params:
            a, b, d = a.detach(), b.detach(), d.detach()
        return lilaw_terms(pred, target, a, b, d, multi_label=multi_label)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Applies the spec's clamps in place: ``alpha >= alpha_min``, ``delta >= beta``."""
        self.alpha.clamp_(min=self.alpha_min)
        self.delta.copy_(torch.maximum(self.delta, self.beta))

    def as_dict(self) -> dict[str, float]:
        """Returns ``{"alpha": ..., "beta": ..., "delta": ...}`` as Python floats."""
        values = torch.stack([self.alpha.detach(), self.beta.detach(), self.delta.detach()]).tolist()
        return dict(zip(("alpha", "beta", "delta"), values, strict=True))

    def extra_repr(self) -> str:
        v = self.as_dict()
        return f"alpha={v['alpha']:.4f}, beta={v['beta']:.4f}, delta={v['delta']:.4f}, alpha_min={self.alpha_min}"
