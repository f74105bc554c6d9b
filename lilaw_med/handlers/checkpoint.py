"""CheckpointHandler: atomic, self-verifying training checkpoints at an interval of iterations or epochs.

MONAI's ``CheckpointSaver`` (over ignite's ``Checkpoint``/``DiskSaver``) writes the file in place or
renames it without an fsync, so a kill or a full disk can leave a truncated "latest" checkpoint and
lose the previous one. This handler replaces it for the training state: each checkpoint is
serialised in memory, hashed, written through :func:`lilaw_med.utils.atomic_write` (a temporary file
in the same folder, fsync, ``os.replace``, fsync of the folder), then recorded in ``index.json``
(also atomic); only then are checkpoints older than the newest ``keep_last`` deleted.

Each file verifies itself, with or without the index: a 56-byte header (:data:`MAGIC`, the SHA-256
of the payload, the payload's length) precedes the ``torch.save`` payload. A reader
(:func:`read_checkpoint`) checks the file's size against a limit before reading it, the length and
digest before unpickling anything, then the structure of every field a resume trusts (iteration,
epoch, epoch length, batch size, the trainer's counters) and reports in one line what is wrong.
:func:`load_latest_checkpoint` takes the newest checkpoint that passes and reports every one it had
to skip.

A checkpoint holds only tensors and plain Python values: the ``state_dict()`` of every object given,
the engine's counters, the AMP scaler of a MONAI trainer and the random number generator states of
Python, NumPy, torch and CUDA and of the training loader (:mod:`lilaw_med.rng`), so it loads with
``weights_only=True`` and a crafted file cannot run code.

Under ``torch.distributed`` the handler runs on every rank: the state that differs between ranks (the
``rank_objects``, such as the dynamics recorder's partial epoch, the random generators, the training
loader's random state and its sampler) is gathered to rank 0 at each save and stored per rank under
``"ranks"``, so a resume gives each rank back its own. Rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch.nn.parallel import DistributedDataParallel

from lilaw_med.rng import capture_loader_rng_state, capture_rng_state
from lilaw_med.utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "MAGIC",
    "CheckpointHandler",
    "CheckpointInfo",
    "find_checkpoints",
    "gather_rank_states",
    "load_latest_checkpoint",
    "load_object_state",
    "object_state",
    "encode_checkpoint",
    "read_checkpoint",
    "state_nbytes",
    "validate_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lilaw_med.checkpoint/1"
INDEX_NAME = "index.json"
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")
MAGIC = b"LILAW-MED-CKPT\x00\x02"
"""The first 16 bytes of a self-verifying checkpoint (format 2); the SHA-256 (32 bytes) and the
payload length (8 bytes, little-endian) follow, then the ``torch.save`` payload."""
_HEADER = len(MAGIC) + 32 + 8
_ZIP = b"PK\x03\x04"  # a bare torch.save file: a checkpoint of the first format, verifiable by the index only
# engine.state attributes worth keeping besides ignite's counters (MONAI's best metric bookkeeping)
_ENGINE_EXTRAS = ("best_metric", "best_metric_epoch")


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file found on disk.

    Attributes:
        path: the file.
        iteration: the engine iteration it was saved at (from its name).
        sha256: the SHA-256 of the payload ``index.json`` recorded for it, ``None`` when the index does
            not list it (a kill between writing the file and the index); the file's own digest is
            checked in any case.
        nbytes: the file size the index recorded, or ``None``.
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


def encode_checkpoint(payload: bytes) -> bytes:
    """A self-verifying checkpoint file: :data:`MAGIC`, the payload's SHA-256 and length, the payload.

    Args:
        payload: the ``torch.save`` bytes.

    Returns:
        The file's bytes.
    """
    return MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "little") + payload


def _header_digest(path: Path) -> tuple[str, int] | None:
    """``(payload SHA-256, file size)`` from a format-2 file's header, without reading the payload."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < _HEADER or not head.startswith(MAGIC):
        return None
    return head[len(MAGIC) : len(MAGIC) + 32].hex(), size


def _read_payload(info: CheckpointInfo, max_bytes: int | None) -> bytes:
    """The verified payload of a checkpoint file: size, then length and digest, before anything is unpickled."""
    name = info.path.name
    with open(info.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if info.nbytes is not None and size != info.nbytes:
            raise ValueError(f"{name} has {size} bytes but {info.nbytes} were written (truncated file)")
        if max_bytes is not None and size > max_bytes:
            raise ValueError(
                f"{name} has {size} bytes, more than the {max_bytes} allowed for this run's checkpoints "
                "(train.max_checkpoint_ratio times the expected size); it was not read"
            )
        head = f.read(_HEADER)
        if head.startswith(MAGIC) and len(head) == _HEADER:
            digest = head[len(MAGIC) : len(MAGIC) + 32]
            length = int.from_bytes(head[len(MAGIC) + 32 :], "little")
            if length != size - _HEADER:
                raise ValueError(
                    f"{name} declares a {length}-byte payload but holds {size - _HEADER} bytes after its header "
                    "(truncated or extended file)"
                )
            data = f.read(length)
            if hashlib.sha256(data).digest() != digest:
                raise ValueError(f"{name} does not match the SHA-256 stored in it (corrupt file)")
            if info.sha256 is not None and info.sha256 != digest.hex():
                raise ValueError(f"{name} does not match the SHA-256 recorded in {INDEX_NAME} (replaced file)")
            return data
        if head.startswith(_ZIP):  # the first format: a bare torch.save file, with its digest in the index only
            if info.sha256 is None:
                raise ValueError(
                    f"{name} holds no digest of its own (an older checkpoint format) and {INDEX_NAME} records none "
                    "for it: it cannot be verified"
                )
            data = head + f.read()
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise ValueError(
                    f"{name} does not match the SHA-256 recorded when it was written (corrupt file)"
                )
            return data
    raise ValueError(
        f"{name} is not a lilaw-med checkpoint (it starts with {head[:16]!r}, expected {MAGIC!r}; truncated or "
        "corrupt file)"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_checkpoint(payload: Mapping[str, Any], name: str, iteration: int | None = None) -> None:
    """Checks the structure of every field a resume trusts, and that they agree with each other.

    Args:
        payload: a loaded checkpoint.
        name: the file name (for the message).
        iteration: the iteration the file name says (``None``: not known).

    Raises:
        ValueError: one line naming the field and what is wrong with it.
    """
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{name} is not a lilaw-med checkpoint (format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    missing = {"iteration", "epoch", "objects", "rng"} - set(payload)
    if missing:
        raise ValueError(f"{name} lacks {sorted(missing)} (incomplete checkpoint)")
    it, epoch, length = payload["iteration"], payload["epoch"], payload.get("epoch_length")

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{name}: field '{field}' {why} (corrupt or crafted checkpoint)")

    if not _is_int(it) or it < 0:
        raise bad("iteration", f"must be a non-negative integer but is {it!r}")
    if iteration is not None and it != iteration:
        raise bad("iteration", f"is {it} but the file name says {iteration}")
    if not _is_int(epoch) or epoch < 0:
        raise bad("epoch", f"must be a non-negative integer but is {epoch!r}")
    if length is None:
        if it:
            raise bad("epoch_length", "is missing but the run had started")
    elif not _is_int(length) or length < 1:
        raise bad("epoch_length", f"must be a positive integer but is {length!r}")
    elif epoch != -(-it // length):  # ignite's epoch counter during (or at the end of) epoch ceil(it / length)
        raise bad("epoch", f"is {epoch} but iteration {it} at {length} iterations per epoch is in epoch {-(-it // length)}")
    for field in ("batch_size", "sampler_length"):
        value = payload.get(field)
        if value is not None and (not _is_int(value) or value < (1 if field == "batch_size" else 0)):
            raise bad(field, f"must be a positive integer or null but is {value!r}")
    if not isinstance(payload["objects"], Mapping) or not isinstance(payload["rng"], Mapping):
        raise bad("objects", "must map names to saved states")
    if "ranks" in payload:
        _validate_ranks(payload, bad)
    engine = payload["objects"].get("trainer")
    if isinstance(engine, Mapping) and isinstance(engine.get("engine"), Mapping):
        engine = engine["engine"]  # what ignite restores its counters from
        for field, value in (("iteration", it), ("epoch_length", length)):
            if field in engine and engine[field] != value:
                raise bad(f"objects.trainer.{field}", f"is {engine[field]!r} but the checkpoint's {field} is {value!r}")
        max_epochs = engine.get("max_epochs")
        if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < 1):
            raise bad("objects.trainer.max_epochs", f"must be a positive integer but is {max_epochs!r}")
        if max_epochs is not None and length is not None and it > length * max_epochs:
            raise bad("iteration", f"is {it}, past the run's end ({max_epochs} epochs of {length} iterations)")


def _validate_ranks(payload: Mapping[str, Any], bad: Callable[[str, str], ValueError]) -> None:
    """The per-rank part of a checkpoint: one entry per process, in rank order, each with its states."""
    ranks, world_size = payload["ranks"], payload.get("world_size")
    if not _is_int(world_size) or world_size < 1:
        raise bad("world_size", f"must be a positive integer but is {world_size!r}")
    if not isinstance(ranks, list) or len(ranks) != world_size:
        got = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        raise bad("ranks", f"must list the states of {world_size} process(es) but holds {got}")
    for r, entry in enumerate(ranks):
        if not isinstance(entry, Mapping) or entry.get("rank") != r:
            raise bad(f"ranks[{r}]", f"must be the state of rank {r} (a mapping with 'rank': {r})")
        for field in ("objects", "rng"):
            if not isinstance(entry.get(field), Mapping):
                raise bad(f"ranks[{r}].{field}", "must map names to saved states")


def read_checkpoint(
    info: CheckpointInfo | str | Path, map_location: str | torch.device = "cpu", max_bytes: int | None = None
) -> dict[str, Any]:
    """Reads and verifies one checkpoint: size, digest, ``torch.load(weights_only=True)``, structure.

    Args:
        info: the checkpoint (a :class:`CheckpointInfo` also checks the size and hash the index recorded).
        map_location: where tensors are loaded.
        max_bytes: refuse, before reading it, a file larger than this (``None``: no limit).

    Returns:
        The checkpoint dict (``format``, ``iteration``, ``epoch``, ``epoch_length``, ``objects``, ``rng``, ...).

    Raises:
        ValueError: when the file is too large, truncated, corrupt, not a lilaw-med checkpoint, does not
            match its own digest or the index's, or a field a resume trusts is malformed; the one-line
            message says which.
        FileNotFoundError: when the file does not exist.
    """
    if not isinstance(info, CheckpointInfo):
        match = _NAME.match(Path(info).name)
        info = CheckpointInfo(Path(info), int(match.group(1)) if match else -1)
    data = _read_payload(info, max_bytes)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        raise ValueError(
            f"{info.path.name} cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from e
    if not isinstance(payload, dict):
        raise ValueError(f"{info.path.name} is not a lilaw-med checkpoint (it holds a {type(payload).__name__})")
    validate_checkpoint(payload, info.path.name, info.iteration if info.iteration >= 0 else None)
    return payload


def load_latest_checkpoint(
    save_dir: str | Path,
    map_location: str | torch.device = "cpu",
    max_bytes: int | None = None,
    validate: Callable[[CheckpointInfo, dict[str, Any]], None] | None = None,
) -> tuple[CheckpointInfo, dict[str, Any], list[tuple[CheckpointInfo, str]]]:
    """The newest valid checkpoint of ``save_dir``; newer invalid ones are skipped and reported.

    Args:
        save_dir: the checkpoint folder.
        map_location: where tensors are loaded.
        max_bytes: a file larger than this is refused before it is read.
        validate: a further check of a loaded checkpoint (e.g. its tensors' shapes against the model);
            a ``ValueError`` it raises makes the checkpoint skipped like a corrupt one.

    Returns:
        ``(info, checkpoint, rejected)``: the checkpoint used, its content, and ``(info, reason)`` for
        every newer checkpoint that was partial, corrupt or invalid.

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
            ckpt = read_checkpoint(info, map_location, max_bytes)
            if validate is not None:
                validate(info, ckpt)
            return info, ckpt, rejected
        except (ValueError, OSError) as e:
            rejected.append((info, str(e)))
    reasons = "; ".join(reason for _, reason in rejected)
    raise ValueError(f"every checkpoint in {save_dir} is unusable: {reasons}.")


def state_nbytes(value: Any) -> int:
    """The bytes of the tensors, arrays, strings and numbers in a (nested) state: about what
    ``torch.save`` writes for it.

    Args:
        value: a state (dicts, lists, tensors, arrays, plain values).

    Returns:
        The estimate in bytes.
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if hasattr(value, "nbytes") and not isinstance(value, (str, bytes)):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(state_nbytes(k) + state_nbytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return sum(state_nbytes(v) for v in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


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
    and, for a MONAI trainer with AMP, ``engine.scaler.state_dict()``.

    Per rank (``"ranks"``, one entry per process; one entry without ``torch.distributed``): the states
    of ``rank_objects``, the RNG states, the loader's random state and its sampler's ``state_dict()``.
    Under ``torch.distributed`` attach the handler on EVERY rank (each save is a collective that
    gathers these to rank 0); only the writer (rank 0) touches files.

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
        writer: whether this process writes the files; by default rank 0 (or the only process), which
            is also the rank the states are gathered to.

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
        rank_objects: Mapping[str, Any] | None = None,
        writer: bool | None = None,
    ) -> None:
        for name, value in (("every_n_iterations", every_n_iterations), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer or None but is {value}.")
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1 but is {keep_last}.")
        objects = {k: v for k, v in objects.items() if v is not None}
        rank_objects = {k: v for k, v in (rank_objects or {}).items() if v is not None}
        if not objects:
            raise ValueError("objects is empty: give at least the network and the trainer to checkpoint.")
        both = sorted(set(objects) & set(rank_objects))
        if both:
            raise ValueError(
                f"{both} given both as objects and as rank_objects; a state is shared or per rank."
            )
        for name, obj in {**objects, **rank_objects}.items():
            if not callable(getattr(_unwrap(obj), "state_dict", None)):
                raise TypeError(
                    f"objects[{name!r}] ({type(obj).__name__}) has no state_dict() to checkpoint."
                )
        self.save_dir = Path(save_dir)
        self.objects = objects
        self.rank_objects = rank_objects
        self._writer = writer
        self.every_n_iterations = None if every_n_iterations is None else int(every_n_iterations)
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.keep_last = int(keep_last)
        self.save_on_completed = bool(save_on_completed)
        self.last_checkpoint: Path | None = None
        self._last_saved_iteration: int | None = None
        self._pending = False  # an iteration-level save deferred to EPOCH_COMPLETED

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the checkpoint files (rank 0, or the only process)."""
        return idist.get_rank() == 0 if self._writer is None else bool(self._writer)

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
        if not self.is_writer:
            return  # the folder is rank 0's
        self.save_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.save_dir.glob(".*.tmp"):  # left by a kill during a write (checkpoint or index)
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
    def rank_state(self, engine: Engine) -> dict[str, Any]:
        """This process's own part of a checkpoint.

        Args:
            engine: the trainer.

        Returns:
            ``{"rank", "objects" (the rank_objects' states), "rng", "loader_rng", "sampler" (when the
            training loader's sampler has a ``state_dict``)}``.
        """
        loader = getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)
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
        state = engine.state
        path = self.save_dir / f"ckpt_{state.iteration:09d}.pt"
        # before anything else of this save: the random states as the uninterrupted run has them here
        ranks = gather_rank_states(self.rank_state(engine))
        if ranks is None or not self.is_writer:  # not the writer: its part is with rank 0 now
            self.last_checkpoint = path
            engine.state.last_checkpoint = str(path)
            self._last_saved_iteration = int(state.iteration)
            return path
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
            # rank 0's, also under "ranks": read by checkpoints' older readers
            "rng": ranks[0]["rng"],
            "loader_rng": ranks[0]["loader_rng"],
            "world_size": len(ranks),
            "ranks": ranks,
        }
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and callable(getattr(scaler, "state_dict", None)):
            payload["scaler"] = scaler.state_dict()
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        try:
            blob = encode_checkpoint(data)
            atomic_write(path, blob)
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
                        "bytes": len(blob),
                        "sha256": digest,
                        "saved_at": payload["saved_at"],
                    }
                elif "sha256" not in entry and (own := _header_digest(c.path)) is not None:
                    # written just before a kill that prevented its index update: its own header gives
                    # the digest (it is checked against the payload whenever the file is read)
                    entry.update(iteration=c.iteration, sha256=own[0], bytes=own[1])
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
