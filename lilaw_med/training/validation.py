"""EpochValidation: evaluates the network on the (noisy) validation split every N epochs and keeps the
best model by a key metric."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from lilaw_med.training.evaluation import classification_metrics, is_better, run_inference
from lilaw_med.utils import atomic_save_torch

__all__ = ["SCALAR_METRICS", "EpochValidation"]

logger = logging.getLogger(__name__)

SCALAR_METRICS = ("accuracy", "balanced_accuracy", "auroc", "ece", "loss")


class EpochValidation:
    """Runs inference on the validation (and optionally test) split at ``EPOCH_COMPLETED``.

    Writes ``val_<metric>`` (and ``test_<metric>``) for every metric in :data:`SCALAR_METRICS` into
    ``engine.state.metrics`` (attach it before the run logger), and saves the network's weights with
    :func:`lilaw_med.utils.atomic_save_torch` to ``best_path`` whenever the key metric improves
    (lower is better for ``loss``/``ece``, higher otherwise). The validation split may be as
    noisy as the training data: the best checkpoint is chosen on noisy labels, as a user would.

    Args:
        network: the network to evaluate (the unwrapped module under DDP).
        val_loader: loader of the validation split (no shuffling, no augmentation).
        device: where to run inference.
        key_metric: metric selecting the best checkpoint.
        best_path: where to save the best weights (``None``: do not save, e.g. on ranks > 0).
        test_loader: also evaluate the test split (monitoring only; never used for selection).
        interval: evaluate every ``interval`` epochs (and always at the last epoch).
        amp: autocast the forward.
        channels_last: feed 4-D inputs in channels-last memory format.
        class_names: names for per-class metrics.
        multi_label: independent sigmoid outputs.
        n_bins: ECE bins.
        checkpoint_extra: plain values stored beside the weights (network name, sizes, class names).
    """

    def __init__(
        self,
        network: nn.Module,
        val_loader: Iterable,
        device: torch.device,
        key_metric: str = "auroc",
        best_path: Any = None,
        test_loader: Iterable | None = None,
        interval: int = 1,
        amp: bool = False,
        channels_last: bool = False,
        class_names: Sequence[str] | None = None,
        multi_label: bool = False,
        n_bins: int = 15,
        checkpoint_extra: Mapping[str, Any] | None = None,
    ) -> None:
        if key_metric not in SCALAR_METRICS:
            raise ValueError(f"key_metric must be one of {list(SCALAR_METRICS)} but is {key_metric!r}.")
        self.network = network
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.device = device
        self.key_metric = key_metric
        self.best_path = best_path
        self.interval = int(interval)
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)
        self.class_names = list(class_names) if class_names else None
        self.multi_label = bool(multi_label)
        self.n_bins = int(n_bins)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.best_metric: float | None = None
        self.best_epoch = 0
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def attach(self, engine: Engine) -> None:
        """Registers :meth:`__call__` on ``EPOCH_COMPLETED``."""
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def evaluate(self, loader: Iterable) -> dict[str, Any]:
        """All metrics of the network on one loader (see :func:`classification_metrics`)."""
        logits, labels, _ = run_inference(self.network, loader, self.device, self.amp, channels_last=self.channels_last)
        if labels is None:
            raise ValueError("the evaluation split has no labels.")
        return classification_metrics(
            logits, labels, self.class_names, multi_label=self.multi_label, n_bins=self.n_bins
        )

    def __call__(self, engine: Engine) -> None:
        """Evaluates, publishes the metrics and saves the best weights."""
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        results = {"val": self.evaluate(self.val_loader)}
        if self.test_loader is not None:
            results["test"] = self.evaluate(self.test_loader)
        self.last_metrics = results
        for split, metrics in results.items():
            engine.state.metrics.update({f"{split}_{k}": metrics[k] for k in SCALAR_METRICS})
        value = results["val"][self.key_metric]
        if is_better(self.key_metric, value, self.best_metric):
            self.best_metric, self.best_epoch = float(value), epoch
            if self.best_path is not None:
                atomic_save_torch(
                    {
                        "network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
                        "epoch": epoch,
                        "key_metric": self.key_metric,
                        "metric": float(value),
                        **self.checkpoint_extra,
                    },
                    self.best_path,
                )
        engine.state.metrics[f"val_best_{self.key_metric}"] = (
            self.best_metric if self.best_metric is not None else math.nan
        )
        logger.info(
            "epoch %d: val %s=%.4f (best %.4f at epoch %d)",
            epoch, self.key_metric, value, self.best_metric if self.best_metric is not None else math.nan, self.best_epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"best_metric": float (NaN when none), "best_epoch": int}``."""
        return {"best_metric": math.nan if self.best_metric is None else self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the best value so far.

        Raises:
            KeyError: when ``best_metric`` is missing.
        """
        value = float(state_dict["best_metric"])
        self.best_metric = value if math.isfinite(value) else None
        self.best_epoch = int(state_dict.get("best_epoch", 0))
