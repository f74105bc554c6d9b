"""CheckpointHandler: atomic, verifiable training checkpoints at an interval of iterations or epochs.

MONAI's ``CheckpointSaver`` (over ignite's ``Checkpoint``/``DiskSaver``) writes the file in place or
renames it without an fsync, so a kill or a full disk can leave a truncated "latest" checkpoint and
lose the previous one. This handler replaces it for the training state: each checkpoint is
serialised in memory, hashed, written through :func:`lilaw_med.utils.atomic_write` (a temporary file
in the same folder, fsync, ``os.replace``, fsync of the folder), then recorded in ``index.json``
(also atomic); only then are checkpoints older than the newest ``keep_last`` deleted. A loader
(:func:`load_latest_checkpoint`) takes the newest checkpoint whose hash matches the index and that
``torch.load(weights_only=True)`` reads, and reports every one it had to skip.

A checkpoint holds only tensors and plain Python values: the ``state_dict()`` of every object given,
the engine's counters, the AMP scaler of a MONAI trainer and the random number generator states of
Python, NumPy, torch and CUDA and of the training loader (:mod:`lilaw_med.rng`), so it loads with
``weights_only=True`` and a crafted file cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.nn.parallel import DistributedDataParallel

from lilaw_med.rng import capture_loader_rng_state, capture_rng_state
from lilaw_med.utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointHandler",
    "CheckpointInfo",
    "find_checkpoints",
    "load_latest_checkpoint",
    "load_object_state",
    "object_state",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lilaw_med.checkpoint/1"
INDEX_NAME = "index.json"
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")
# engine.state attributes worth keeping besides ignite's counters (MONAI's best metric bookkeeping)
_ENGINE_EXTRAS = ("best_metric", "best_metric_epoch")


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file found on disk.

    Attributes:
        path: the file.
        iteration: the engine iteration it was saved at (from its name).
        sha256: the hash ``index.json`` recorded for it, ``None`` when the index does not list it
            (a kill between writing the file and the index).
        nbytes: the size the index recorded, or ``None``.
    """

    path: Path
    iteration: int
    sha256: str | None = None
    nbytes: int | None = None


def _read_index(save_dir: Path) -> dict[str, dict[str, Any]]:
    index = save_dir / INDEX_NAME
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text(encoding="utf-8")).get("checkpoints", [])
        return {str(e["file"]): e for e in entries}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        logger.warning(
            "checkpoint index %s is unreadable (%s); checking every checkpoint file instead.", index, e
        )
        return {}


def find_checkpoints(save_dir: str | Path) -> list[CheckpointInfo]:
    """Every ``ckpt_<iteration>.pt`` file in ``save_dir``, newest (highest iteration) first.

    Files are found by name, not only through ``index.json``, so a checkpoint written just before a
    kill that prevented the index update is still found.

    Args:
        save_dir: the checkpoint folder (``RUN_DIR/checkpoints``).

    Returns:
        The checkpoints, with the hash and size the index recorded when it lists them.
    """
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    index = _read_index(save_dir)
    found = []
    for path in save_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            entry = index.get(path.name, {})
            found.append(CheckpointInfo(path, int(match.group(1)), entry.get("sha256"), entry.get("bytes")))
    return sorted(found, key=lambda c: c.iteration, reverse=True)


def read_checkpoint(
    info: CheckpointInfo | str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Reads and verifies one checkpoint with ``torch.load(weights_only=True)``.

    Args:
        info: the checkpoint (a :class:`CheckpointInfo` also checks the recorded size and hash).
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (``format``, ``iteration``, ``epoch``, ``epoch_length``, ``objects``, ``rng``, ...).

    Raises:
        ValueError: when the file is truncated, corrupt, not a lilaw-med checkpoint, or does not match
            the hash recorded in the index; the message says which.
        FileNotFoundError: when the file does not exist.
    """
    if not isinstance(info, CheckpointInfo):
        info = CheckpointInfo(Path(info), -1)
    data = info.path.read_bytes()
    if info.nbytes is not None and len(data) != info.nbytes:
        raise ValueError(
            f"{info.path.name} has {len(data)} bytes but {info.nbytes} were written (truncated file)"
        )
    if info.sha256 is not None and hashlib.sha256(data).hexdigest() != info.sha256:
        raise ValueError(
            f"{info.path.name} does not match the SHA-256 recorded when it was written (corrupt file)"
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        raise ValueError(
            f"{info.path.name} cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{info.path.name} is not a lilaw-med checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    missing = {"iteration", "epoch", "objects", "rng"} - set(payload)
    if missing:
        raise ValueError(f"{info.path.name} lacks {sorted(missing)} (incomplete checkpoint)")
    return payload


def load_latest_checkpoint(
    save_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CheckpointInfo, dict[str, Any], list[tuple[CheckpointInfo, str]]]:
    """The newest valid checkpoint of ``save_dir``; newer invalid ones are skipped and reported.

    Args:
        save_dir: the checkpoint folder.
        map_location: where tensors are loaded.

    Returns:
        ``(info, checkpoint, rejected)``: the checkpoint used, its content, and ``(info, reason)`` for
        every newer checkpoint that was partial or corrupt.

    Raises:
        FileNotFoundError: when the folder holds no checkpoint at all.
        ValueError: when every checkpoint is invalid (the reasons are listed).
    """
    candidates = find_checkpoints(save_dir)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in {save_dir}: nothing to resume from.")
    rejected: list[tuple[CheckpointInfo, str]] = []
    for info in candidates:
        try:
            return info, read_checkpoint(info, map_location), rejected
        except (ValueError, OSError) as e:
            rejected.append((info, str(e)))
    reasons = "; ".join(reason for _, reason in rejected)
    raise ValueError(f"every checkpoint in {save_dir} is unusable: {reasons}.")


# ------------------------------------------------------------------ writing
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


class CheckpointHandler:
    """Writes an atomic checkpoint of ``objects`` every ``every_n_iterations`` iterations and/or every
    ``every_n_epochs`` epochs, and at the end of the run; keeps the newest ``keep_last``.

    Files are ``save_dir/ckpt_<iteration:09d>.pt`` and ``save_dir/index.json`` lists them with their
    epoch, iteration, size and SHA-256. The handler runs LAST among the engine's handlers of each event
    (it moves itself there when the run starts), so a checkpoint holds the state after the LiLAW meta
    step, the validation run and the loggers of that iteration/epoch. An iteration-level checkpoint
    that falls on the last iteration of an epoch is taken at ``EPOCH_COMPLETED`` instead, after the
    epoch's validation: a resume never skips an epoch's evaluation.

    Besides each object's ``state_dict()``, a checkpoint holds the engine's counters, the RNG states,
    the training loader's batch size and sampler length (to place the resumable sampler on resume) and its
    random state (its generator and those of its random transforms, see :func:`capture_loader_rng_state`)
    and,
    for a MONAI trainer with AMP, ``engine.scaler.state_dict()``.

    Args:
        save_dir: the checkpoint folder (created when missing).
        objects: name -> object with ``state_dict()``/``load_state_dict()`` (network, optimizer,
            scheduler, the LiLAW handler, the trainer itself, ...). ``None`` values are skipped.
        every_n_iterations: save every this many iterations (``None``: not by iteration).
        every_n_epochs: save every this many epochs (``None``: not by epoch).
        keep_last: how many checkpoints to keep (>= 1; 2 keeps the previous good one beside the newest).
        save_on_completed: also save when the run completes (so a finished run is recognised on resume).

    Raises:
        ValueError: on a non-positive interval or ``keep_last``, or when ``objects`` is empty.
        TypeError: when an object has no ``state_dict``.
    """

    def __init__(
        self,
        save_dir: str | Path,
        objects: Mapping[str, Any],
        every_n_iterations: int | None = None,
        every_n_epochs: int | None = 1,
        keep_last: int = 2,
        save_on_completed: bool = True,
    ) -> None:
        for name, value in (("every_n_iterations", every_n_iterations), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer or None but is {value}.")
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1 but is {keep_last}.")
        objects = {k: v for k, v in objects.items() if v is not None}
        if not objects:
            raise ValueError("objects is empty: give at least the network and the trainer to checkpoint.")
        for name, obj in objects.items():
            if not callable(getattr(_unwrap(obj), "state_dict", None)):
                raise TypeError(
                    f"objects[{name!r}] ({type(obj).__name__}) has no state_dict() to checkpoint."
                )
        self.save_dir = Path(save_dir)
        self.objects = objects
        self.every_n_iterations = None if every_n_iterations is None else int(every_n_iterations)
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.keep_last = int(keep_last)
        self.save_on_completed = bool(save_on_completed)
        self.last_checkpoint: Path | None = None
        self._last_saved_iteration: int | None = None
        self._pending = False  # an iteration-level save deferred to EPOCH_COMPLETED

    # ------------------------------------------------------------ ignite wiring
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
        self.save_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.save_dir.glob(".ckpt_*.tmp"):  # left by a kill during a write
            tmp.unlink(missing_ok=True)
        for info in find_checkpoints(self.save_dir):
            if info.iteration > engine.state.iteration:
                # from a timeline this run does not continue (e.g. a corrupt newer checkpoint skipped on resume)
                stale = info.path.with_name(info.path.name + ".stale")
                with contextlib.suppress(FileNotFoundError):
                    info.path.replace(stale)
                logger.warning(
                    "set aside %s (iteration %d is after this run's start %d) as %s.",
                    info.path.name,
                    info.iteration,
                    engine.state.iteration,
                    stale.name,
                )

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

    # ------------------------------------------------------------ saving
    def __call__(self, engine: Engine) -> Path:
        """Saves a checkpoint now.

        Args:
            engine: the trainer.

        Returns:
            The checkpoint's path.

        Raises:
            OSError: when it cannot be written (no space, no permission); the message names the file,
                and the previous checkpoints and the index are left as they were.
        """
        state = engine.state
        loader = getattr(engine, "data_loader", None) or getattr(state, "dataloader", None)
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
            "rng": capture_rng_state(),
            "loader_rng": capture_loader_rng_state(loader),
        }
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and callable(getattr(scaler, "state_dict", None)):
            payload["scaler"] = scaler.state_dict()
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        path = self.save_dir / f"ckpt_{state.iteration:09d}.pt"
        try:
            atomic_write(path, data)
            entries = {c.path.name: c for c in find_checkpoints(self.save_dir)}
            keep = sorted(entries.values(), key=lambda c: c.iteration, reverse=True)[: self.keep_last]
            old_index = _read_index(self.save_dir)
            index = []
            for c in keep:
                entry = dict(old_index.get(c.path.name, {}))
                if c.path == path:
                    entry = {
                        "iteration": int(state.iteration),
                        "epoch": int(state.epoch),
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "saved_at": payload["saved_at"],
                    }
                entry["file"] = c.path.name
                index.append(entry)
            atomic_write(
                self.save_dir / INDEX_NAME,
                json.dumps({"format": CHECKPOINT_FORMAT, "checkpoints": index}, indent=1),
            )
        except OSError as e:
            raise OSError(
                e.errno,
                f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoints in "
                f"{self.save_dir} are intact",
            ) from e
        for name, c in entries.items():  # only after the new index is durable
            if all(k.path.name != name for k in keep):
                c.path.unlink(missing_ok=True)
        self.last_checkpoint = path
        engine.state.last_checkpoint = str(
            path
        )  # for other handlers' messages (e.g. the non-finite-loss stop)
        self._last_saved_iteration = int(state.iteration)
        logger.debug("checkpoint %s written (epoch %d, iteration %d).", path, state.epoch, state.iteration)
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
