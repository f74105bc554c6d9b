"""CheckpointHandler: decides when a training checkpoint is taken and what it holds; the file itself
(format, index, retention, reading) is :mod:`lilaw_med.run.checkpoint_format`.

A checkpoint holds only tensors and plain Python values: the ``state_dict()`` of every object given,
the engine's counters, the AMP scaler of a MONAI trainer and, per rank, the random number generator
states of Python, NumPy, torch and CUDA and of the training loader (:mod:`lilaw_med.rng`), so it loads
with ``weights_only=True`` and a crafted file cannot run code. Under ``torch.distributed`` the handler
runs on every rank: each save gathers the per-rank states to rank 0, which alone writes.

What is ignite's and what is not: files are written by :class:`VerifyingDiskSaver`, an ignite
``DiskSaver`` whose write is durable and self-verifying. The handler itself is not an ignite
``Checkpoint``: that class deletes the oldest file before writing the new one (a kill or a full disk
in between leaves one checkpoint fewer than promised), keeps its retention list in memory (blind to
the files a killed process left), and saves one rank's objects (no per-rank states gathered to the
writer). See docs/fault_tolerance.md.

Example::

    handler = CheckpointHandler("runs/my-run/checkpoints", {"network": net, "optimizer": opt, "trainer": trainer},
                                every_n_epochs=1, keep_last=2)
    handler.attach(trainer)
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from torch.nn.parallel import DistributedDataParallel

from lilaw_med.rng import capture_loader_rng_state, capture_rng_state
from lilaw_med.run.checkpoint_format import (
    CHECKPOINT_FORMAT,
    checkpoint_name,
    prepare_checkpoint_folder,
    write_checkpoint,
)

__all__ = [
    "CheckpointHandler",
    "VerifyingDiskSaver",
    "gather_rank_states",
    "load_object_state",
    "object_state",
]

logger = logging.getLogger(__name__)

# engine.state attributes worth keeping besides ignite's counters (MONAI's best metric bookkeeping)
_ENGINE_EXTRAS = ("best_metric", "best_metric_epoch")


class VerifyingDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with a durable, self-verifying write and ``index.json`` retention.

    ``DiskSaver``'s atomic write renames a temporary file without an fsync of the file or the folder
    (a power loss may leave an empty "latest" file) and records no digest; this saver writes through
    :func:`lilaw_med.run.checkpoint_format.write_checkpoint` (header with SHA-256, fsync, rename,
    index, then retention). It keeps ``DiskSaver``'s folder, rank and ``remove`` behaviour.

    Args:
        dirname: the checkpoint folder (created on the saving rank when missing).
        keep_last: how many checkpoints each save leaves in the folder, the new one included (>= 1).
        save_on_rank: the rank that writes.

    Example::

        saver = VerifyingDiskSaver("runs/my-run/checkpoints", keep_last=2)
        saver(payload, checkpoint_name(payload["iteration"]))
    """

    def __init__(self, dirname: str | Path, keep_last: int = 2, save_on_rank: int = 0) -> None:
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1 but is {keep_last}.")
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.keep_last = int(keep_last)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Writes ``checkpoint`` (a payload, see :func:`~lilaw_med.run.checkpoint_format.validate_checkpoint`)
        on the saving rank; ``filename`` must be its :func:`~lilaw_med.run.checkpoint_format.checkpoint_name`.

        Raises:
            ValueError: when ``filename`` is not the payload's checkpoint name.
            OSError: as :func:`~lilaw_med.run.checkpoint_format.write_checkpoint`.
        """
        if filename != checkpoint_name(checkpoint["iteration"]):
            raise ValueError(f"filename {filename!r} is not {checkpoint_name(checkpoint['iteration'])!r}.")
        if idist.get_rank() == self.save_on_rank:
            write_checkpoint(self.dirname, checkpoint, self.keep_last)


# ------------------------------------------------------------------ states
def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, DistributedDataParallel) else obj


def object_state(obj: Any) -> Any:
    """The checkpointed state of one object: ``state_dict()``, plus MONAI's best-metric bookkeeping for
    an ignite engine; a DDP-wrapped network is saved unwrapped (loadable with or without DDP).

    Args:
        obj: anything with ``state_dict()``.

    Returns:
        Its state (tensors and plain values).

    Raises:
        TypeError: when the object has no ``state_dict``.
    """
    obj = _unwrap(obj)
    if not callable(getattr(obj, "state_dict", None)):
        raise TypeError(f"cannot checkpoint a {type(obj).__name__}: it has no state_dict().")
    state = obj.state_dict()
    if isinstance(obj, Engine):
        extras = {
            k: getattr(obj.state, k)
            for k in _ENGINE_EXTRAS
            if isinstance(getattr(obj.state, k, None), (int, float))
        }
        state = {"engine": dict(state), "extras": extras}
    return state


def load_object_state(obj: Any, state: Any) -> None:
    """Restores what :func:`object_state` saved.

    Args:
        obj: the object to restore into.
        state: its saved state.
    """
    obj = _unwrap(obj)
    if isinstance(obj, Engine):
        obj.load_state_dict(state["engine"])
        for k, v in state.get("extras", {}).items():
            setattr(obj.state, k, v)
    else:
        obj.load_state_dict(state)


def gather_rank_states(state: Mapping[str, Any], dst: int = 0) -> list[dict[str, Any]] | None:
    """Gathers every rank's state (tensors and plain values) on rank ``dst``, in rank order.

    A collective: every rank of the process group must call it at the same point. Each state travels
    as ``torch.save`` bytes and is read back with ``torch.load(weights_only=True)``, so what rank
    ``dst`` receives is exactly what a checkpoint file may hold. ``torch.distributed.gather_object``
    (not ignite's ``all_gather``) sends the states to the one rank that writes instead of to all.

    Args:
        state: this rank's state.
        dst: the receiving rank.

    Returns:
        ``[state of rank 0, state of rank 1, ...]`` on rank ``dst`` (``[state]`` when not distributed),
        ``None`` on the other ranks.
    """
    world_size = idist.get_world_size()
    if world_size == 1:
        return [dict(state)]
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    rank = idist.get_rank()
    received: list[Any] | None = [None] * world_size if rank == dst else None
    dist.gather_object(buffer.getvalue(), received, dst=dst)
    if received is None:
        return None
    return [torch.load(io.BytesIO(b), map_location="cpu", weights_only=True) for b in received]



def _interval(name: str, value: int | None) -> int | None:
    """A save interval: a positive integer, or ``None`` (off)."""
    if value is not None and int(value) < 1:
        raise ValueError(f"{name} must be a positive integer or None but is {value}.")
    return None if value is None else int(value)


class CheckpointHandler:
    """Takes an atomic checkpoint of ``objects`` every ``every_n_iterations`` iterations and/or every
    ``every_n_epochs`` epochs, and at the end of the run; keeps the newest ``keep_last``.

    Files are ``save_dir/ckpt_<iteration:09d>.pt`` beside ``save_dir/index.json``
    (:mod:`lilaw_med.run.checkpoint_format`). The handler runs LAST among the engine's handlers of each
    event (it moves itself there when the run starts), so a checkpoint holds the state after the LiLAW
    meta step, the validation run and the loggers of that iteration/epoch. An iteration-level checkpoint
    that falls on the last iteration of an epoch is taken at ``EPOCH_COMPLETED`` instead, after the
    epoch's validation: a resume never skips an epoch's evaluation.

    Besides each object's ``state_dict()``, a checkpoint holds the engine's counters, the training
    loader's batch size and sampler length (to place the resumable sampler on resume) and, for a MONAI
    trainer with AMP, ``engine.scaler.state_dict()``. Per rank (``"ranks"``, one entry per process; one
    entry without ``torch.distributed``): the states of ``rank_objects``, the RNG states, the loader's
    random state (its generator and those of its random transforms, see :func:`capture_loader_rng_state`)
    and its sampler's ``state_dict()``. Under ``torch.distributed`` attach the handler on EVERY rank
    (each save is a collective that gathers these to rank 0); only rank 0 touches files.

    Args:
        save_dir: the checkpoint folder (created when missing).
        objects: name -> object with ``state_dict()``/``load_state_dict()`` (network, optimizer,
            scheduler, the LiLAW handler, the trainer itself, ...). ``None`` values are skipped.
        every_n_iterations: save every this many iterations (``None``: not by iteration).
        every_n_epochs: save every this many epochs (``None``: not by epoch).
        keep_last: how many checkpoints to keep (>= 1; 2 keeps the previous good one beside the newest).
        save_on_completed: also save when the run completes (so a finished run is recognised on resume).
        rank_objects: name -> object whose state differs between ranks (e.g. the dynamics recorder, which
            accumulates the items of its own rank's batches); saved per rank.

    Raises:
        ValueError: on a non-positive interval or ``keep_last``, or when ``objects`` is empty.
        TypeError: when an object has no ``state_dict``.

    Example::

        handler = CheckpointHandler(run / "checkpoints", {"network": net, "trainer": trainer}, every_n_epochs=1)
        handler.attach(trainer)
        trainer.run()
        print(handler.last_checkpoint)
    """

    def __init__(
        self,
        save_dir: str | Path,
        objects: Mapping[str, Any],
        every_n_iterations: int | None = None,
        every_n_epochs: int | None = 1,
        keep_last: int = 2,
        save_on_completed: bool = True,
        rank_objects: Mapping[str, Any] | None = None,
    ) -> None:
        self.every_n_iterations = _interval("every_n_iterations", every_n_iterations)
        self.every_n_epochs = _interval("every_n_epochs", every_n_epochs)
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1 but is {keep_last}.")
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.rank_objects = {k: v for k, v in (rank_objects or {}).items() if v is not None}
        _check_objects(self.objects, self.rank_objects)
        self.save_dir = Path(save_dir)
        self.keep_last = int(keep_last)
        self.save_on_completed = bool(save_on_completed)
        self.saver: VerifyingDiskSaver | None = None  # made when the run starts: the folder is created then
        self.last_checkpoint: Path | None = None
        self._last_saved_iteration: int | None = None
        self._pending = False  # an iteration-level save deferred to EPOCH_COMPLETED

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the checkpoint files (rank 0, or the only process)."""
        return idist.get_rank() == 0

    # ------------------------------------------------------------ when
    def _handlers(self) -> list[tuple[Any, Callable[[Engine], None]]]:
        return [
            (Events.ITERATION_COMPLETED, self._iteration_completed),
            (Events.EPOCH_COMPLETED, self._epoch_completed),
            (Events.COMPLETED, self._completed),
        ]

    def attach(self, engine: Engine) -> None:
        """Registers the saves on ``ITERATION_COMPLETED``, ``EPOCH_COMPLETED`` and ``COMPLETED``, and a
        ``STARTED`` hook that moves them after every other handler and sets the folder aside of stale
        files.

        Args:
            engine: the trainer.
        """
        if not engine.has_event_handler(self._started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._started)
        for event, fn in self._handlers():
            if not engine.has_event_handler(fn, event):
                engine.add_event_handler(event, fn)

    def _started(self, engine: Engine) -> None:
        # handlers attached after this one (validation, loggers, the LiLAW meta step) must run first
        for event, fn in self._handlers():
            if engine.has_event_handler(fn, event):
                engine.remove_event_handler(fn, event)
            engine.add_event_handler(event, fn)
        self._last_saved_iteration = engine.state.iteration
        if self.is_writer:  # the folder is rank 0's
            prepare_checkpoint_folder(self.save_dir, engine.state.iteration)
        self.saver = VerifyingDiskSaver(self.save_dir, keep_last=self.keep_last)

    def _iteration_completed(self, engine: Engine) -> None:
        if self.every_n_iterations is None or engine.state.iteration % self.every_n_iterations:
            return
        epoch_length = engine.state.epoch_length
        if epoch_length and engine.state.iteration % epoch_length == 0:
            self._pending = True  # the epoch's validation has not run yet: save after it
        else:
            self(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        due = self.every_n_epochs is not None and engine.state.epoch % self.every_n_epochs == 0
        if due or self._pending:
            self(engine)
        self._pending = False

    def _completed(self, engine: Engine) -> None:
        if self.save_on_completed and self._last_saved_iteration != engine.state.iteration:
            self(engine)

    # ------------------------------------------------------------ what
    def rank_state(self, engine: Engine) -> dict[str, Any]:
        """This process's own part of a checkpoint.

        Args:
            engine: the trainer.

        Returns:
            ``{"rank", "objects" (the rank_objects' states), "rng", "loader_rng", "sampler" (when the
            training loader's sampler has a ``state_dict``)}``.
        """
        loader = _training_loader(engine)
        sampler = getattr(loader, "sampler", None)
        state: dict[str, Any] = {
            "rank": idist.get_rank(),
            "objects": {name: object_state(obj) for name, obj in self.rank_objects.items()},
            "rng": capture_rng_state(),
            "loader_rng": capture_loader_rng_state(loader),
        }
        if callable(getattr(sampler, "state_dict", None)):
            state["sampler"] = sampler.state_dict()
        return state

    def payload(self, engine: Engine, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint of ``engine`` now, with the gathered per-rank states.

        Args:
            engine: the trainer.
            ranks: every rank's :meth:`rank_state`, in rank order.

        Returns:
            The payload :func:`~lilaw_med.run.checkpoint_format.validate_checkpoint` accepts.
        """
        state = engine.state
        loader = _training_loader(engine)
        sampler = getattr(loader, "sampler", None)
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "iteration": int(state.iteration),
            "epoch": int(state.epoch),
            "epoch_length": None if state.epoch_length is None else int(state.epoch_length),
            "batch_size": getattr(loader, "batch_size", None),
            "sampler_length": len(sampler) if sampler is not None and hasattr(sampler, "__len__") else None,
            "saved_at": time.time(),
            "objects": {name: object_state(obj) for name, obj in self.objects.items()},
            "world_size": len(ranks),
            "ranks": ranks,
        }
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and callable(getattr(scaler, "state_dict", None)):
            payload["scaler"] = scaler.state_dict()
        return payload

    def __call__(self, engine: Engine) -> Path:
        """Saves a checkpoint now (on every rank: the per-rank states are gathered to the writer).

        Args:
            engine: the trainer.

        Returns:
            The checkpoint's path (on every rank; only the writer writes it).

        Raises:
            OSError: when it cannot be written (no space, no permission); the message names the file,
                and the previous checkpoints and the index are left as they were.
        """
        iteration = int(engine.state.iteration)
        path = self.save_dir / checkpoint_name(iteration)
        # before anything else of this save: the random states as the uninterrupted run has them here
        ranks = gather_rank_states(self.rank_state(engine))
        if ranks is not None and self.is_writer:  # the other ranks' parts are with rank 0 now
            if self.saver is None:  # saved before the run started (called by hand)
                self.saver = VerifyingDiskSaver(self.save_dir, keep_last=self.keep_last)
            self.saver(self.payload(engine, ranks), path.name)
            logger.debug("checkpoint %s written (epoch %d, iteration %d).", path, engine.state.epoch, iteration)
        self.last_checkpoint = path
        engine.state.last_checkpoint = str(path)  # for other handlers' messages (e.g. the non-finite-loss stop)
        self._last_saved_iteration = iteration
        return path

    # ------------------------------------------------------------ checkpointing the handler itself
    def state_dict(self) -> dict[str, Any]:
        """The handler's bookkeeping (nothing a resume needs beyond the engine's counters).

        Returns:
            ``{"last_saved_iteration": int | None}``.
        """
        return {"last_saved_iteration": self._last_saved_iteration}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`.

        Args:
            state_dict: a dict from :meth:`state_dict`.
        """
        self._last_saved_iteration = state_dict.get("last_saved_iteration")


def _training_loader(engine: Engine) -> Any:
    return getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)


def _check_objects(objects: Mapping[str, Any], rank_objects: Mapping[str, Any]) -> None:
    """Raises when there is nothing to save, a name is both shared and per rank, or an object has no state."""
    if not objects:
        raise ValueError("objects is empty: give at least the network and the trainer to checkpoint.")
    both = sorted(set(objects) & set(rank_objects))
    if both:
        raise ValueError(f"{both} given both as objects and as rank_objects; a state is shared or per rank.")
    for name, obj in {**objects, **rank_objects}.items():
        if not callable(getattr(_unwrap(obj), "state_dict", None)):
            raise TypeError(f"objects[{name!r}] ({type(obj).__name__}) has no state_dict() to checkpoint.")
