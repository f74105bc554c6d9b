"""EpochValidation: evaluates the network on the (noisy) validation split every N epochs and keeps the
best model by a key metric.

Under torchrun each rank runs inference on its own shard of the split (positions ``rank, rank +
world_size, ...``: :func:`lilaw_med.data.dataset.shard_indices`, no item padded or repeated), then the
shards' logits, labels and ids are gathered (:func:`gather_shards`) and put back in the split's order
(:func:`merge_shards`), so every rank computes the same metrics over exactly the whole split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from lilaw_med.errors import InputError
from lilaw_med.training import distributed
from lilaw_med.training.evaluation import classification_metrics, is_better, run_inference
from lilaw_med.utils import atomic_save_torch

__all__ = ["SCALAR_METRICS", "EpochValidation", "gather_shards", "merge_shards"]

logger = logging.getLogger(__name__)

SCALAR_METRICS = ("accuracy", "balanced_accuracy", "auroc", "ece", "loss")


def merge_shards(
    logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor | None], ids: Sequence[Sequence[str]]
) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """The whole split from its ranks' shards: rank ``r``'s ``k``-th item is position ``r + k * world_size``.

    Args:
        logits: per rank (in rank order), the logits of its shard, (n_r, K).
        labels: per rank, the labels of its shard (``None``: the shard's batches held none).
        ids: per rank, the item ids of its shard.

    Returns:
        ``(logits, labels, ids)`` of the whole split in its own order, as one process computes them;
        ``labels`` is ``None`` when a non-empty shard has none.

    Raises:
        ValueError: when the shards' sizes are not those of positions ``rank::world_size`` of their total
            (a loader that pads, repeats or is not sharded), or the three lists differ in length.
    """
    world = len(logits)
    if not world or len(labels) != world or len(ids) != world:
        raise ValueError(f"one shard per rank expected: {len(logits)} logits, {len(labels)} labels, {len(ids)} ids.")
    lengths = [int(t.shape[0]) for t in logits]
    n = sum(lengths)
    _check_shard_sizes(lengths, ids)
    filled = [r for r in range(world) if lengths[r]]
    if not filled:
        return logits[0], labels[0], []
    inverse = _interleaving(n, world)
    all_logits = torch.cat([logits[r] for r in filled])[inverse]
    return all_logits, _merged_labels([labels[r] for r in filled], inverse), _merged_ids(ids, inverse)


def _merged_labels(parts: Sequence[torch.Tensor | None], inverse: torch.Tensor) -> torch.Tensor | None:
    """The non-empty shards' labels in split order; ``None`` when one of them has none."""
    return None if any(p is None for p in parts) else torch.cat(parts)[inverse]  # type: ignore[arg-type]


def _merged_ids(ids: Sequence[Sequence[str]], inverse: torch.Tensor) -> list[str]:
    flat = [str(i) for shard in ids for i in shard]
    return [flat[j] for j in inverse.tolist()]


def _check_shard_sizes(lengths: Sequence[int], ids: Sequence[Sequence[str]]) -> None:
    """Rank ``r`` holds positions ``r::world_size`` of the split: exactly that many items and ids."""
    world, n = len(lengths), sum(lengths)
    for r, k in enumerate(lengths):
        expected = len(range(r, n, world))
        if k != expected or len(ids[r]) != k:
            raise ValueError(
                f"rank {r}'s validation shard holds {k} item(s) ({len(ids[r])} id(s)) but positions {r}, "
                f"{r}+{world}, ... of {n} items are {expected}: the per-epoch loaders must take exactly "
                "positions rank::world_size of the split (no padding, no repeats)."
            )


def _interleaving(n: int, world: int) -> torch.Tensor:
    """The row of the rank-ordered concatenation of ``world`` shards that holds each split position (n,)."""
    order = torch.cat([torch.arange(r, n, world) for r in range(world)])  # split position of each gathered row
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    return inverse


def gather_shards(
    logits: torch.Tensor, labels: torch.Tensor | None, ids: Sequence[str], world_size: int
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[list[str]]]:
    """Every rank's shard of an inference pass, on every rank (``ignite.distributed`` collectives).

    The sizes, shapes and ids travel in one ``all_gather_object``; the logits and labels are padded to
    the largest shard and gathered as tensors, then cut back to each shard's true length, so no padded
    row reaches the metrics. A rank whose shard is empty (fewer items than ranks) takes part too.

    Args:
        logits: this rank's logits (n_r, K), from :func:`~lilaw_med.training.evaluation.run_inference`.
        labels: this rank's labels, or ``None``.
        ids: this rank's item ids.
        world_size: the number of ranks the loaders were sharded for.

    Returns:
        ``(logits, labels, ids)``: one entry per rank, in rank order (the input of :func:`merge_shards`).

    Raises:
        RuntimeError: when the process group's size is not ``world_size``.
    """
    if idist.get_world_size() != world_size:
        raise RuntimeError(
            f"validation is sharded for {world_size} ranks but the process group has {idist.get_world_size()}."
        )
    n = int(logits.shape[0])
    label_meta = None if labels is None else (tuple(labels.shape[1:]), labels.dtype)
    metas = idist.all_gather({"n": n, "shape": tuple(logits.shape[1:]), "dtype": logits.dtype,
                              "labels": label_meta, "ids": [str(i) for i in ids]})  # fmt: skip
    sizes = [int(m["n"]) for m in metas]
    filled = [m for m in metas if m["n"]] or metas[:1]
    most = max(sizes)
    all_logits = _gather_padded(logits, filled[0]["shape"], filled[0]["dtype"], sizes) if most else [logits] * world_size
    return all_logits, _gather_labels(labels, filled, sizes), [list(m["ids"]) for m in metas]


def _gather_labels(
    labels: torch.Tensor | None, filled: Sequence[Mapping[str, Any]], sizes: Sequence[int]
) -> list[torch.Tensor | None]:
    """Every rank's labels; all ``None`` when a non-empty shard has none (the same on every rank)."""
    if any(m["labels"] is None for m in filled) or not max(sizes):
        return [None] * len(sizes)
    shape, dtype = filled[0]["labels"]
    return list(_gather_padded(labels, shape, dtype, sizes))


def _gather_padded(
    local: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, sizes: Sequence[int]
) -> list[torch.Tensor]:
    """Every rank's rows of ``local`` (this rank's ``sizes[rank]`` rows of ``shape``), padded to the
    largest shard for ``all_gather`` and cut back to each shard's true length."""
    n, most = sizes[idist.get_rank()], max(sizes)
    padded = torch.zeros((most, *shape), dtype=dtype)
    if local is not None and n:
        padded[:n] = local.reshape(n, *shape).to(dtype)
    stacked = idist.all_gather(padded).cpu()  # (world_size * most, ...)
    return [stacked[r * most : r * most + sizes[r]] for r in range(len(sizes))]


def _publish(engine: Engine, results: Mapping[str, Mapping[str, Any]]) -> None:
    """``{split}_{metric}`` of every scalar metric into ``engine.state.metrics``."""
    for split, metrics in results.items():
        engine.state.metrics.update({f"{split}_{k}": metrics[k] for k in SCALAR_METRICS})


class EpochValidation:
    """Runs inference on the validation (and optionally test) split at ``EPOCH_COMPLETED``.

    Writes ``val_<metric>`` (and ``test_<metric>``) for every metric in :data:`SCALAR_METRICS` into
    ``engine.state.metrics`` (attach it before the run logger), and saves the network's weights with
    :func:`lilaw_med.utils.atomic_save_torch` to ``best_path`` whenever the key metric improves
    (lower is better for ``loss``/``ece``, higher otherwise). The validation split may be as
    noisy as the training data: the best checkpoint is chosen on noisy labels, as a user would.

    With ``world_size > 1`` (under torchrun) each rank's loaders hold only its shard of each split
    (positions ``rank, rank + world_size, ...``, none padded or repeated): every rank first takes rank
    0's buffers (:func:`~lilaw_med.training.distributed.broadcast_buffers`, so every shard is seen by
    the network rank 0 saves), infers on its shard, and the shards are gathered and put back in the
    split's order (:func:`gather_shards`, :func:`merge_shards`). Every rank then computes the same
    metrics over the whole split as one process does, and keeps the same best epoch.

    Args:
        network: the network to evaluate (the unwrapped module under DDP).
        val_loader: loader of the validation split (no shuffling, no augmentation); with
            ``world_size > 1``, of this rank's shard of it.
        device: where to run inference.
        key_metric: metric selecting the best checkpoint.
        best_path: where to save the best weights (``None``: do not save, e.g. on ranks > 0).
        test_loader: also evaluate the test split (monitoring only; never used for selection); sharded
            as ``val_loader`` is.
        interval: evaluate every ``interval`` epochs (and always at the last epoch).
        amp: autocast the forward.
        channels_last: feed 4-D inputs in channels-last memory format.
        class_names: names for per-class metrics.
        multi_label: independent sigmoid outputs.
        n_bins: ECE bins.
        checkpoint_extra: plain values stored beside the weights (network name, sizes, class names).
        world_size: the number of ranks the loaders are sharded for (1: they hold the whole splits).
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
        world_size: int = 1,
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
        self.world_size = int(world_size)
        self.best_metric: float | None = None
        self.best_epoch = 0
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def attach(self, engine: Engine) -> None:
        """Registers :meth:`__call__` on ``EPOCH_COMPLETED``."""
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def evaluate(self, loader: Iterable) -> dict[str, Any]:
        """All metrics of the network on one loader (see :func:`classification_metrics`); with
        ``world_size > 1`` a collective: every rank calls it with its shard and gets the whole split's."""
        logits, labels, ids = run_inference(self.network, loader, self.device, self.amp, channels_last=self.channels_last)
        if self.world_size > 1:
            logits, labels, ids = merge_shards(*gather_shards(logits, labels, ids, self.world_size))
        if labels is None:
            raise InputError("the evaluation split has no labels.")
        return classification_metrics(
            logits, labels, self.class_names, multi_label=self.multi_label, n_bins=self.n_bins
        )

    def __call__(self, engine: Engine) -> None:
        """Evaluates, publishes the metrics and saves the best weights."""
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        if self.world_size > 1:
            distributed.broadcast_buffers(self.network)
        results = {"val": self.evaluate(self.val_loader)}
        if self.test_loader is not None:
            results["test"] = self.evaluate(self.test_loader)
        self.last_metrics = results
        _publish(engine, results)
        value = results["val"][self.key_metric]
        if is_better(self.key_metric, value, self.best_metric):
            self.best_metric, self.best_epoch = float(value), epoch
            self._save_best(epoch, float(value))
        engine.state.metrics[f"val_best_{self.key_metric}"] = (
            self.best_metric if self.best_metric is not None else math.nan
        )
        logger.info(
            "epoch %d: val %s=%.4f (best %.4f at epoch %d)",
            epoch, self.key_metric, value, self.best_metric if self.best_metric is not None else math.nan, self.best_epoch,
        )

    def _save_best(self, epoch: int, value: float) -> None:
        """Writes the network's weights to :attr:`best_path` (when given), atomically."""
        if self.best_path is None:
            return
        atomic_save_torch(
            {
                "network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
                "epoch": epoch,
                "key_metric": self.key_metric,
                "metric": value,
                **self.checkpoint_extra,
            },
            self.best_path,
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
