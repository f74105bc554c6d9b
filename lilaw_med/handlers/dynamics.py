"""DynamicsRecorder: each item's training dynamics, by id, every epoch, for the audit.

The recorder reads what training computes anyway (no extra forward pass):

* the TRAINING batch's LiLAW statistics from :attr:`LiLAWLoss.last_stats` /
  :attr:`LiLAWLoss.last_loss` and its ids from ``engine.state.batch["id"]``;
* optionally the meta step's VALIDATION statistics from :attr:`LiLAWLoss.last_val_stats` /
  :attr:`LiLAWLoss.last_val_loss` and ids from :attr:`LiLAWHandler.last_val_batch`.

The two never mix, whatever order the handlers are attached in: the meta step writes only the
``last_val_*`` attributes, the training statistics are taken only from ``last_stats``, and a
validation record is taken once per meta step (the statistics object is remembered by
identity), at the latest at ``EPOCH_COMPLETED``, so a meta step that runs after the recorder in
the same iteration still counts for its own epoch.

Each epoch's record holds, per item, the MEAN over the times the item was seen in that epoch
(once for training; several times for the cycled validation loader); the file format and its
reader are :mod:`lilaw_med.run.dynamics_format`. Memory is linear in items: one float32
accumulator row per item for the current epoch (a memory-mapped file beside the dynamics when the
set is large, one per rank), and the epochs live on disk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.dynamics_format import FLOAT_FIELDS, record_dtype, write_epoch
from lilaw_med.weighting import class_probabilities

if TYPE_CHECKING:
    from lilaw_med.handlers.meta_step import LiLAWHandler

__all__ = ["DynamicsRecorder"]

logger = logging.getLogger(__name__)

_PID_IN_NAME = re.compile(r"\.pid(\d+)\.npy$")


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without sending anything).

    A process of another user (``PermissionError``) counts as alive, and so does anything unsure:
    only a file whose process is surely gone may be deleted.
    """
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True

DEFAULT_MEMMAP_THRESHOLD = 2_000_000


class _EpochBuffer:
    """Accumulates one split's per-item sums for the current epoch (memory linear in items)."""

    def __init__(self, n: int, label_shape: tuple[int, ...], memmap_path: Path | None = None, growable: bool = False):
        self.label_shape = label_shape
        self.growable = growable
        self.memmap_path = memmap_path
        self._alloc(n)

    def _alloc(self, n: int) -> None:
        shape = (n, len(FLOAT_FIELDS), *self.label_shape)
        if self.memmap_path is not None and n > 0:
            self.memmap_path.parent.mkdir(parents=True, exist_ok=True)
            self.sums = np.lib.format.open_memmap(self.memmap_path, mode="w+", dtype=np.float32, shape=shape)
            self.sums[...] = 0
        else:
            self.sums = np.zeros(shape, dtype=np.float32)
        self.counts = np.zeros(n, dtype=np.int64)
        self.pred = np.full((n, *self.label_shape), -1, dtype=np.int16)
        self.probs: np.ndarray | None = None  # (n, C) sums, allocated once C is known

    def ensure_probs(self, num_classes: int) -> None:
        if self.probs is None:
            self.probs = np.zeros((self.n, num_classes), dtype=np.float32)
        elif self.probs.shape[1] != num_classes:
            raise ValueError(f"class probabilities changed from {self.probs.shape[1]} to {num_classes} classes.")

    @property
    def n(self) -> int:
        return self.counts.shape[0]

    def grow(self, n: int) -> None:
        if n <= self.n:
            return
        sums, counts, pred, probs = self.sums, self.counts, self.pred, self.probs
        old = self.n
        self.memmap_path = None  # growable buffers (ids learned on the fly) stay in memory
        self._alloc(n)
        self.sums[:old], self.counts[:old], self.pred[:old] = sums, counts, pred
        if probs is not None:
            self.ensure_probs(probs.shape[1])
            self.probs[:old] = probs

    def reset(self) -> None:
        self.sums[...] = 0
        self.counts[...] = 0
        self.pred[...] = -1
        if self.probs is not None:
            self.probs[...] = 0

    def add(self, index: np.ndarray, values: np.ndarray, pred: np.ndarray, probs: np.ndarray | None = None) -> None:
        np.add.at(self.sums, index, values)
        np.add.at(self.counts, index, 1)
        self.pred[index] = pred
        if probs is not None:
            self.ensure_probs(probs.shape[1])
            np.add.at(self.probs, index, probs)

    def record(self) -> np.ndarray:
        num_classes = None if self.probs is None else self.probs.shape[1]
        rec = np.zeros(self.n, dtype=record_dtype(self.label_shape, num_classes))
        seen = self.counts > 0
        denom = np.where(seen, self.counts, 1).reshape(-1, *([1] * (1 + len(self.label_shape))))
        means = np.asarray(self.sums) / denom
        means[~seen] = np.nan
        for j, name in enumerate(FLOAT_FIELDS):
            rec[name] = means[:, j].astype(np.float16)
        if self.probs is not None:
            probs = self.probs / denom.reshape(-1, 1)
            probs[~seen] = np.nan
            rec["probs"] = probs.astype(np.float16)
        rec["pred_label"] = self.pred
        rec["count"] = np.minimum(self.counts, np.iinfo(np.uint16).max).astype(np.uint16)
        return rec

    def state(self) -> dict[str, torch.Tensor]:
        state = {
            "sums": torch.from_numpy(np.array(self.sums)),
            "counts": torch.from_numpy(self.counts.copy()),
            "pred": torch.from_numpy(self.pred.copy()),
        }
        if self.probs is not None:
            state["probs"] = torch.from_numpy(self.probs.copy())
        return state

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        sums = state["sums"].numpy()
        if sums.shape[0] != self.n:
            if not self.growable:
                raise ValueError(
                    f"the saved dynamics buffer holds {sums.shape[0]} items but the recorder has {self.n}: "
                    "resume with the same datalist."
                )
            self.grow(sums.shape[0])
        self.sums[...] = sums
        self.counts[...] = state["counts"].numpy()
        self.pred[...] = state["pred"].numpy()
        if "probs" in state:
            self.ensure_probs(state["probs"].shape[1])
            self.probs[...] = state["probs"].numpy()


def _batch_ids(batch: Any) -> list[str] | None:
    """Item ids of a collated batch (dict with "id") or a decollated one (list of dicts)."""
    if isinstance(batch, Mapping):
        return _collated_ids(batch.get("id"))
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(b, Mapping) for b in batch):
        if not all("id" in b for b in batch):
            return None
        return [str(b["id"]) for b in batch]
    return None


def _collated_ids(ids: Any) -> list[str] | None:
    """A collated batch's ``"id"`` entry as a list of strings (one string: a batch of one)."""
    if ids is None:
        return None
    if isinstance(ids, str):
        return [ids]
    return [str(i) for i in ids]


def _dataset_ids(loader: Any) -> list[str] | None:
    """The ids of a loader's dataset when it is a list of dicts with "id" (MONAI Dataset)."""
    data = getattr(getattr(loader, "dataset", None), "data", None)
    if isinstance(data, Sequence) and data and all(isinstance(d, Mapping) and "id" in d for d in data):
        return [str(d["id"]) for d in data]
    return None


def _runner_up(x: torch.Tensor, m: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
    """The largest probability of another class than the label's: the top one when the label is not
    it, else the second (from ``probs`` (N, C) when given; exact for binary and per-label outputs,
    an upper bound of the runner-up otherwise).

    Args:
        x: the label's probability, (N,) or (N, L).
        m: the largest probability, shaped like ``x``.
        probs: (N, C) class probabilities, or ``None``.
    """
    agree = x >= m
    if probs is not None and probs.shape[1] >= 2:
        return torch.where(agree, probs.topk(2, dim=1).values[:, 1], m)
    return torch.where(agree, 1 - x, m)


def _item_loss(x: torch.Tensor, loss_values: torch.Tensor | None) -> torch.Tensor:
    """The per-item loss shaped like ``x`` (a per-label loss averaged per item is broadcast; NaN when absent)."""
    if loss_values is None:
        return torch.full_like(x, float("nan"))
    loss = loss_values.detach().float().cpu()
    if loss.shape != x.shape:
        n, label_dims = x.shape[0], x.dim() - 1
        loss = loss.reshape(n, -1).mean(dim=1).reshape(-1, *([1] * label_dims)).expand_as(x)
    return loss


class DynamicsRecorder:
    """Records every item's per-epoch training dynamics by id (see the module docstring).

    Args:
        loss: the :class:`LiLAWLoss` the trainer uses; its ``last_stats`` / ``last_loss`` are read
            after every training iteration (and ``last_val_stats`` / ``last_val_loss`` after every
            meta step when ``record_validation``).
        ids: the ids of the training items, in any fixed order (the order of the arrays on disk).
        out_dir: the folder to write (``RUN_DIR/dynamics``); created when missing.
        record_validation: also record the meta step's validation items. Needs the
            :class:`LiLAWHandler` as ``meta_handler``.
        val_ids: the ids of the validation items; by default taken from the meta handler's
            loader (``val_loader.dataset.data``), else learned as they come (not under DDP).
        meta_handler: the :class:`LiLAWHandler` whose ``last_val_batch`` / ``last_val_pred`` hold the
            validation ids and logits (needed to record the validation items).
        memmap: keep the current epoch's accumulators in a memory-mapped file in ``out_dir``
            (``True``/``False``); ``None`` decides by ``memmap_threshold``.
        memmap_threshold: number of training items from which ``memmap=None`` memory-maps.
        distributed: sum the per-epoch accumulators across ranks (``torch.distributed``) before
            rank 0 writes, so each item is recorded once; ``None`` decides from whether a process
            group of more than one rank is initialised. Every rank must attach a recorder with the
            same ``ids``.
        reduce_fn: replaces the all-reduce: ``reduce_fn(tensor, op)`` with ``op`` ``"sum"`` or
            ``"max"`` must return the tensor reduced over ranks (for a launcher of one's own).
        is_writer: whether this process writes the files; by default rank 0 (or the only process).
        rank: this process's rank, named in the memory-mapped accumulator's file; by default ignite's.

    Raises:
        TypeError: when ``loss`` is not a :class:`LiLAWLoss`.
        ValueError: on duplicate or empty ids.

    Example::

        recorder = DynamicsRecorder(loss, train_ids, run_dir / "dynamics", meta_handler=lilaw_handler)
        recorder.attach(trainer)                             # then trainer.run(); read with load_dynamics
    """

    def __init__(
        self,
        loss: LiLAWLoss,
        ids: Sequence[str],
        out_dir: str | os.PathLike,
        record_validation: bool = True,
        val_ids: Sequence[str] | None = None,
        meta_handler: LiLAWHandler | None = None,
        memmap: bool | None = None,
        memmap_threshold: int = DEFAULT_MEMMAP_THRESHOLD,
        distributed: bool | None = None,
        reduce_fn: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        is_writer: bool | None = None,
        rank: int | None = None,
    ) -> None:
        if not isinstance(loss, LiLAWLoss):
            raise TypeError(f"loss must be a LiLAWLoss but is {type(loss).__name__}.")
        ids = [str(i) for i in ids]
        if not ids:
            raise ValueError("ids must name at least one training item but is empty.")
        self.loss = loss
        self.out_dir = Path(out_dir)
        self.record_validation = bool(record_validation)
        self.meta_handler = meta_handler
        self.memmap = memmap
        self.memmap_threshold = int(memmap_threshold)
        self.distributed = distributed
        self.reduce_fn = reduce_fn
        self._is_writer = is_writer
        self.rank = rank
        self.ids: dict[str, list[str]] = {"training": ids}
        self.index: dict[str, dict[str, int]] = {"training": self._index_of(ids, "ids")}
        self._pending_state: Mapping[str, Any] | None = None
        if val_ids is not None:
            self.ids["validation"] = [str(i) for i in val_ids]
            self.index["validation"] = self._index_of(self.ids["validation"], "val_ids")
        self.buffers: dict[str, _EpochBuffer] = {}
        self.label_shape: tuple[int, ...] | None = None
        self.buffer_epoch: int | None = None  # the epoch the accumulators belong to
        self.epochs: dict[str, list[int]] = {"training": [], "validation": []}
        self.lilaw_by_epoch: dict[str, dict[str, float]] = {}
        self._last_train_stats: Any = None
        self._last_val_stats: Any = None
        self._fwd: tuple[list[str] | None, torch.Tensor | None] | None = None
        self.skipped_batches = 0

    @staticmethod
    def _index_of(ids: list[str], what: str) -> dict[str, int]:
        index = {item: i for i, item in enumerate(ids)}
        if len(index) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"{what} must be unique but {dup!r} appears more than once.")
        return index

    # ---------------------------------------------------------------- ignite wiring
    def attach(self, engine: Engine) -> None:
        """Registers the recorder: ``EPOCH_STARTED`` (new accumulators), MONAI's
        ``FORWARD_COMPLETED`` when the engine has it (ids and the runner-up class probability from
        the logits the trainer computed), ``ITERATION_COMPLETED`` (the records) and
        ``EPOCH_COMPLETED`` (reduce across ranks, write), and ``COMPLETED`` and ``EXCEPTION_RAISED``
        (remove the memory-mapped accumulator file; the exception is raised again, as ignite raises
        none itself once an ``EXCEPTION_RAISED`` handler exists).

        Args:
            engine: a MONAI ``SupervisedTrainer`` or any ignite engine whose process function
                calls ``loss`` on a batch carrying ``"id"``.
        """
        if engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        try:

            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._forward_completed)
        except (ImportError, ValueError):  # a plain ignite engine without MONAI's iteration events
            pass
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._remove_memmap)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)

    # ---------------------------------------------------------------- distributed helpers
    def _is_distributed(self) -> bool:
        if self.reduce_fn is not None:
            return True
        if self.distributed is not None:
            return self.distributed
        return idist.get_world_size() > 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the dynamics files (rank 0, or the only process)."""
        if self._is_writer is not None:
            return self._is_writer
        return idist.get_rank() == 0

    def _reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self.reduce_fn is not None:
            return self.reduce_fn(tensor, op)
        return idist.all_reduce(tensor.clone().to(idist.device()), op="SUM" if op == "sum" else "MAX").cpu()

    # ---------------------------------------------------------------- buffers
    def _ensure_buffers(self, label_shape: tuple[int, ...]) -> None:
        if self.label_shape is not None:
            if label_shape != self.label_shape:
                raise ValueError(
                    f"LiLAW statistics changed shape from {self.label_shape} to {label_shape} per item."
                )
            return
        self.label_shape = label_shape
        n = len(self.ids["training"])
        use_memmap = self.memmap if self.memmap is not None else n >= self.memmap_threshold
        self.buffers["training"] = _EpochBuffer(n, label_shape, memmap_path=self._memmap_path() if use_memmap else None)
        if self.record_validation and "validation" in self.ids:
            self.buffers["validation"] = _EpochBuffer(len(self.ids["validation"]), label_shape)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._load_buffers(state)

    def _memmap_path(self) -> Path:
        """This process's accumulator file: the rank and the process id in its name, so ranks on one
        node (or processes of a launcher of one's own, which ignite sees as rank 0 each) never share
        one. A file this rank's earlier, killed process left behind is removed; a live process's file
        (another run into the same folder) is left alone."""
        rank = self.rank if self.rank is not None else idist.get_rank()
        for stale in self.out_dir.glob(f".accumulators_training.rank{rank}.pid*.npy"):
            match = _PID_IN_NAME.search(stale.name)
            if match is not None and not _process_alive(int(match.group(1))):
                stale.unlink(missing_ok=True)
        return self.out_dir / f".accumulators_training.rank{rank}.pid{os.getpid()}.npy"

    def _remove_memmap(self, engine: Engine | None = None) -> None:
        """Deletes this process's accumulator file once training has completed (the records are written)."""
        buffer = self.buffers.get("training")
        if buffer is not None and buffer.memmap_path is not None:
            path, buffer.memmap_path = buffer.memmap_path, None
            buffer.sums = np.array(buffer.sums)  # keeps the values readable after the file goes
            path.unlink(missing_ok=True)

    def _exception_raised(self, engine: Engine, e: BaseException) -> None:
        """Deletes this process's accumulator file when training fails, then raises ``e`` again."""
        self._remove_memmap(engine)
        raise e

    def _ensure_val_buffer(self, handler: LiLAWHandler) -> bool:
        """Creates the validation accumulators at the first meta step; ``False`` when impossible."""
        if "validation" in self.buffers:
            return True
        if "validation" not in self.ids:
            derived = _dataset_ids(handler.val_loader)
            if derived is not None:
                self.ids["validation"] = derived
                self.index["validation"] = self._index_of(derived, "validation ids")
            elif self._is_distributed():
                logger.warning("validation dynamics not recorded under DDP: pass val_ids to the recorder.")
                return False
        growable = "validation" not in self.ids
        if growable:
            self.ids["validation"], self.index["validation"] = [], {}
        self.buffers["validation"] = _EpochBuffer(
            len(self.ids["validation"]), self.label_shape or (), growable=growable
        )
        return True

    def _lookup(self, split: str, ids: list[str]) -> np.ndarray:
        index = self.index[split]
        buffer = self.buffers[split]
        out = np.empty(len(ids), dtype=np.int64)
        for k, item in enumerate(ids):
            j = index.get(item)
            if j is None:
                if not buffer.growable:
                    raise KeyError(
                        f"item id {item!r} seen in a {split} batch is not among the recorder's {split} ids "
                        f"({len(index)} ids): build the recorder with the ids of the data the loader yields."
                    )
                j = index[item] = len(self.ids[split])
                self.ids[split].append(item)
                if j >= buffer.n:
                    buffer.grow(max(2 * buffer.n, 16))
            out[k] = j
        return out

    def _add(self, split: str, ids: list[str], stats: Any, loss_values: torch.Tensor | None,
             probs: torch.Tensor | None) -> None:
        x = stats.prob_label.detach().float().cpu()
        label_shape = tuple(x.shape[1:])
        self._ensure_buffers(label_shape)
        n = x.shape[0]
        if len(ids) != n:
            raise ValueError(
                f"the {split} batch has {len(ids)} ids but the LiLAW statistics hold {n} items: the recorder "
                "needs the ids of exactly the items the loss saw."
            )
        m = stats.prob_max.detach().float().cpu()
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != n or label_shape):
            probs = None  # not one row of class probabilities per item (multi-label, or another output)
        other = _runner_up(x, m, probs)
        loss = _item_loss(x, loss_values)
        cols = [x, m, other, stats.w_alpha, stats.w_beta, stats.w_delta, stats.weight, loss]
        values = torch.stack([c.detach().float().cpu() for c in cols], dim=1).numpy()
        pred = stats.pred_label.detach().cpu().numpy().astype(np.int16)
        self.buffers[split].add(
            self._lookup(split, ids), values, pred, None if probs is None else probs.numpy().astype(np.float32)
        )

    # ---------------------------------------------------------------- events
    def _epoch_started(self, engine: Engine) -> None:
        if self.buffer_epoch != engine.state.epoch:  # not a mid-epoch resume of this same epoch
            for b in self.buffers.values():
                b.reset()
            self.buffer_epoch = engine.state.epoch
        self._fwd = None

    def _forward_completed(self, engine: Engine) -> None:
        output = engine.state.output
        pred = output.get("pred") if isinstance(output, Mapping) else None
        self._fwd = (_batch_ids(engine.state.batch), self._probs(pred))

    def _probs(self, pred: Any) -> torch.Tensor | None:
        """(N, C) class probabilities on the CPU from a batch's logits; ``None`` for multi-label runs."""
        if not isinstance(pred, torch.Tensor) or pred.ndim not in (1, 2) or self.loss.multi_label:
            return None
        with torch.no_grad():
            return class_probabilities(pred.detach().float()).cpu()

    def _collect_validation(self) -> None:
        if not self.record_validation:
            return
        stats = self.loss.last_val_stats
        if stats is None or stats is self._last_val_stats:
            return
        self._last_val_stats = stats
        handler = self.meta_handler
        if handler is None:
            logger.warning("validation dynamics not recorded: pass the LiLAWHandler as meta_handler to the recorder.")
            self.record_validation = False
            return
        ids = _batch_ids(handler.last_val_batch)
        if ids is None:
            logger.warning("validation dynamics not recorded: the validation batches carry no 'id'.")
            self.record_validation = False
            return
        if self.label_shape is None:
            self._ensure_buffers(tuple(stats.prob_label.shape[1:]))
        if not self._ensure_val_buffer(handler):
            self.record_validation = False
            return
        self._add("validation", ids, stats, self.loss.last_val_loss, self._probs(getattr(handler, "last_val_pred", None)))

    def __call__(self, engine: Engine) -> None:
        """Records the training batch of this iteration (and a new validation batch, if any).

        Args:
            engine: the trainer the recorder is attached to.
        """
        stats = self.loss.last_stats
        if stats is None or stats is self._last_train_stats:
            self.skipped_batches += 1
            if self.skipped_batches == 1 or self.skipped_batches % 1000 == 0:
                logger.warning(
                    "iteration %s: no new LiLAW training statistics (is the trainer's loss the recorder's?); "
                    "batch not recorded (%d so far).", engine.state.iteration, self.skipped_batches,
                )
        else:
            self._last_train_stats = stats
            ids, probs = self._fwd if self._fwd is not None else (None, None)
            if ids is None:
                ids = _batch_ids(engine.state.batch)
            if ids is None:
                raise KeyError(
                    "the training batch carries no 'id': keep the 'id' key through the transforms so the "
                    "dynamics can be recorded per item."
                )
            self._add("training", ids, stats, self.loss.last_loss, probs)
        self._fwd = None
        self._collect_validation()

    def _epoch_completed(self, engine: Engine) -> None:
        self._collect_validation()  # a meta step that ran after the recorder in the last iteration
        epoch = int(engine.state.epoch)
        self.lilaw_by_epoch[str(epoch)] = {**self.loss.weighting.as_dict(), "active": bool(self.loss.is_active)}
        records = {}
        for split, buffer in self.buffers.items():
            if self._is_distributed():
                sums = self._reduce(torch.from_numpy(np.array(buffer.sums)), "sum").numpy()
                counts = self._reduce(torch.from_numpy(buffer.counts), "sum").numpy()
                pred = self._reduce(torch.from_numpy(buffer.pred.astype(np.int32)), "max").numpy()
                buffer.sums[...], buffer.counts[...], buffer.pred[...] = sums, counts, pred.astype(np.int16)
                if buffer.probs is not None:
                    buffer.probs[...] = self._reduce(torch.from_numpy(buffer.probs), "sum").numpy()
            records[split] = buffer.record()[: len(self.ids[split])]
            self.epochs[split] = sorted({*self.epochs[split], epoch})
        if self.is_writer:
            self.write_epoch(epoch, records)
        for b in self.buffers.values():
            b.reset()
        self.buffer_epoch = None

    # ---------------------------------------------------------------- files
    def write_epoch(self, epoch: int, records: Mapping[str, np.ndarray]) -> None:
        """Writes one epoch's records and the manifest atomically.

        Args:
            epoch: the 1-based epoch.
            records: split name -> structured array (n_items,).
        """
        write_epoch(self.out_dir, epoch, records, self.ids, self.epochs, label_shape=self.label_shape or (),
                    multi_label=bool(self.loss.multi_label), lilaw=self.lilaw_by_epoch)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The current epoch's accumulators and the epochs written, for resuming.

        Under DDP this is the calling rank's part of the current epoch (the items of its own
        batches), tagged with its rank: the checkpoint keeps one per rank
        (:class:`~lilaw_med.handlers.checkpoint.CheckpointHandler`'s ``rank_objects``) and each rank
        restores its own, so the reduction at the epoch's end sums every rank's part once.

        Returns:
            A dict of tensors and plain Python values (``torch.load(weights_only=True)`` reads it).
        """
        distributed = self._is_distributed()
        return {
            "rank": idist.get_rank() if distributed else 0,
            "world_size": idist.get_world_size() if distributed else 1,
            "buffer_epoch": -1 if self.buffer_epoch is None else int(self.buffer_epoch),
            "epochs": {k: list(v) for k, v in self.epochs.items()},
            "lilaw": {k: dict(v) for k, v in self.lilaw_by_epoch.items()},
            "label_shape": list(self.label_shape) if self.label_shape is not None else None,
            "buffers": {split: b.state() for split, b in self.buffers.items()},
            "val_ids": list(self.ids.get("validation", [])),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved.

        Args:
            state_dict: a dict from :meth:`state_dict`.

        Raises:
            KeyError: when a key is missing.
            ValueError: when the saved buffers do not fit the recorder's ids.
        """
        missing = {"buffer_epoch", "epochs", "buffers"} - set(state_dict)
        if missing:
            raise KeyError(f"DynamicsRecorder state_dict is missing {sorted(missing)}.")
        be = int(state_dict["buffer_epoch"])
        self.buffer_epoch = None if be < 0 else be
        self.epochs = {k: [int(e) for e in v] for k, v in state_dict["epochs"].items()}
        self.lilaw_by_epoch = {k: dict(v) for k, v in state_dict.get("lilaw", {}).items()}
        self._restore_val_ids(state_dict.get("val_ids") or [])
        if state_dict.get("label_shape") is None:
            return
        shape = tuple(int(s) for s in state_dict["label_shape"])
        if self.label_shape is None:
            self._pending_state = state_dict
            self._ensure_buffers(shape)
        else:
            self._load_buffers(state_dict)

    def _restore_val_ids(self, val_ids: list[str]) -> None:
        """The validation ids the meta step recorded, unless the recorder was given its own."""
        if val_ids and not self.ids.get("validation"):
            self.ids["validation"] = list(val_ids)
            self.index["validation"] = self._index_of(self.ids["validation"], "val_ids")

    def _load_buffers(self, state_dict: Mapping[str, Any]) -> None:
        for split, state in state_dict["buffers"].items():
            if split == "validation" and split not in self.buffers and self.ids.get("validation"):
                self.buffers[split] = _EpochBuffer(len(self.ids[split]), self.label_shape or ())
            if split in self.buffers:
                self.buffers[split].load(state)
                if not self._owns(state_dict):
                    # another rank's partial epoch (a checkpoint that kept rank 0's only): kept by the
                    # writer alone, so the epoch's reduction counts it once, not once per rank
                    self.buffers[split].reset()

    def _owns(self, state_dict: Mapping[str, Any]) -> bool:
        """Whether a saved state is this process's own part of the epoch (the same rank of as many ranks);
        a state that names no rank is rank 0's."""
        if not self._is_distributed():
            return True
        if idist.get_world_size() == 1:  # a launcher of one's own (reduce_fn): ranks unknown here
            return self.is_writer
        rank, world_size = int(state_dict.get("rank", 0)), state_dict.get("world_size")
        if world_size is not None and int(world_size) != idist.get_world_size():
            return self.is_writer  # cannot be split again: the writer keeps it all
        return rank == idist.get_rank()
