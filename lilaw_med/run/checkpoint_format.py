"""The training checkpoint on disk: a self-verifying file, the folder's index, retention and reading.

A file (``ckpt_<iteration:09d>.pt``) is a 56-byte header (:data:`MAGIC`, the SHA-256 of the
payload, the payload's length) and the ``torch.save`` payload, so it verifies itself with or
without ``index.json``. :func:`write_checkpoint` writes it atomically (:func:`lilaw_med.utils.atomic_write`),
then the index, and only then deletes what falls out of ``keep_last``. :func:`read_checkpoint`
checks size, length and digest before unpickling anything (``weights_only=True``), then every field
a resume trusts (:func:`validate_checkpoint`); :func:`load_latest_checkpoint` takes the newest that
passes. The handler that decides when and what to save is
:class:`lilaw_med.handlers.checkpoint.CheckpointHandler`; see docs/fault_tolerance.md.

Example::

    info, ckpt, rejected = load_latest_checkpoint("runs/my-run/checkpoints")
    print(info.iteration, ckpt["epoch"], [reason for _, reason in rejected])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lilaw_med.errors import InputError, one_line
from lilaw_med.utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "INDEX_NAME",
    "MAGIC",
    "CheckpointInfo",
    "checkpoint_name",
    "encode_checkpoint",
    "find_checkpoints",
    "load_latest_checkpoint",
    "prepare_checkpoint_folder",
    "read_checkpoint",
    "state_nbytes",
    "validate_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lilaw_med.checkpoint/1"
"""The ``format`` field of every checkpoint payload and of ``index.json``."""
INDEX_NAME = "index.json"
MAGIC = b"LILAW-MED-CKPT\x00\x02"
"""The first 16 bytes of a checkpoint file; the SHA-256 (32 bytes) and the payload length (8 bytes,
little-endian) follow, then the ``torch.save`` payload."""
_HEADER = len(MAGIC) + 32 + 8
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


def checkpoint_name(iteration: int) -> str:
    """The file name of the checkpoint taken at ``iteration``: ``ckpt_<iteration:09d>.pt``."""
    return f"ckpt_{int(iteration):09d}.pt"


# ------------------------------------------------------------------ the folder
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


def prepare_checkpoint_folder(save_dir: str | Path, iteration: int) -> None:
    """Makes the folder ready for a run that starts at ``iteration``.

    Removes the temporary files a kill during a write left, and sets aside (``.stale``) checkpoints
    newer than ``iteration``: they belong to a timeline this run does not continue (a corrupt newer
    checkpoint skipped on resume, say), and retention must not count them as this run's newest.

    Args:
        save_dir: the checkpoint folder (created when missing).
        iteration: the iteration the run starts from.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    for tmp in save_dir.glob(".*.tmp"):  # left by a kill during a write (checkpoint or index)
        tmp.unlink(missing_ok=True)
    for info in find_checkpoints(save_dir):
        if info.iteration > iteration:
            stale = info.path.with_name(info.path.name + ".stale")
            with contextlib.suppress(FileNotFoundError):
                info.path.replace(stale)
            logger.warning(
                "set aside %s (iteration %d is after this run's start %d) as %s.",
                info.path.name, info.iteration, iteration, stale.name,
            )


# ------------------------------------------------------------------ writing
def encode_checkpoint(payload: bytes) -> bytes:
    """A self-verifying checkpoint file: :data:`MAGIC`, the payload's SHA-256 and length, the payload.

    Args:
        payload: the ``torch.save`` bytes.

    Returns:
        The file's bytes.
    """
    return MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "little") + payload


def _header_digest(path: Path) -> tuple[str, int] | None:
    """``(payload SHA-256, file size)`` from a file's header, without reading the payload."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < _HEADER or not head.startswith(MAGIC):
        return None
    return head[len(MAGIC) : len(MAGIC) + 32].hex(), size


def _index_entries(kept: Iterable[CheckpointInfo], new: Path, new_entry: dict[str, Any], old: Mapping[str, Any]) -> list:
    """The index's entries for the kept checkpoints: the new one's, the recorded ones, or read from a
    file's own header (one written just before a kill that prevented its index update)."""
    entries = []
    for c in kept:
        entry = dict(old.get(c.path.name, {}))
        if c.path == new:
            entry = dict(new_entry)
        elif "sha256" not in entry and (own := _header_digest(c.path)) is not None:
            entry.update(iteration=c.iteration, sha256=own[0], bytes=own[1])
        entry["file"] = c.path.name
        entries.append(entry)
    return entries


def write_checkpoint(save_dir: str | Path, payload: Mapping[str, Any], keep_last: int) -> Path:
    """Writes one checkpoint durably, records it in ``index.json`` and applies retention.

    The order is what makes a kill or a full disk harmless at any point: the file (atomic, fsynced),
    then the index naming the newest ``keep_last`` files (atomic), and only then the removal of the
    others. Until the new index is durable the previous checkpoints and index stay as they were.

    Args:
        save_dir: the checkpoint folder.
        payload: the checkpoint (``format``, ``iteration``, ``epoch``, ... see :func:`validate_checkpoint`).
        keep_last: how many checkpoints to keep, the new one included (>= 1).

    Returns:
        The new file's path.

    Raises:
        OSError: when it cannot be written (no space, no permission); the message names the file, and
            the previous checkpoints and the index are left as they were.
    """
    save_dir = Path(save_dir)
    path = save_dir / checkpoint_name(payload["iteration"])
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    data = buffer.getvalue()
    blob = encode_checkpoint(data)
    new_entry = {"iteration": int(payload["iteration"]), "epoch": int(payload["epoch"]), "bytes": len(blob),
                 "sha256": hashlib.sha256(data).hexdigest(), "saved_at": payload.get("saved_at")}
    try:
        atomic_write(path, blob)
        found = find_checkpoints(save_dir)
        kept = found[:keep_last]
        index = _index_entries(kept, path, new_entry, _read_index(save_dir))
        atomic_write(save_dir / INDEX_NAME, json.dumps({"format": CHECKPOINT_FORMAT, "checkpoints": index}, indent=1))
    except OSError as e:
        raise OSError(
            e.errno,
            f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoints in {save_dir} are intact",
        ) from e
    for c in found[keep_last:]:  # only after the new index is durable
        c.path.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------ reading
def _read_payload(info: CheckpointInfo, max_bytes: int | None) -> bytes:
    """The verified payload of a checkpoint file: size, then length and digest, before anything is unpickled."""
    name = info.path.name
    with open(info.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if info.nbytes is not None and size != info.nbytes:
            raise InputError(f"{name} has {size} bytes but {info.nbytes} were written (truncated file)")
        if max_bytes is not None and size > max_bytes:
            raise InputError(
                f"{name} has {size} bytes, more than the {max_bytes} allowed for this run's checkpoints "
                "(train.max_checkpoint_ratio times the expected size); it was not read"
            )
        digest, length = _read_header(f.read(_HEADER), name, size)
        data = f.read(length)
    if hashlib.sha256(data).digest() != digest:
        raise InputError(f"{name} does not match the SHA-256 stored in it (corrupt file)")
    if info.sha256 is not None and info.sha256 != digest.hex():
        raise InputError(f"{name} does not match the SHA-256 recorded in {INDEX_NAME} (replaced file)")
    return data


def _read_header(head: bytes, name: str, size: int) -> tuple[bytes, int]:
    """``(sha256 digest, payload length)`` from a checkpoint file's header, checked against the file's size."""
    if not (head.startswith(MAGIC) and len(head) == _HEADER):
        raise InputError(
            f"{name} is not a lilaw-med checkpoint (it starts with {head[:16]!r}, expected {MAGIC!r}; "
            "truncated or corrupt file)"
        )
    digest = head[len(MAGIC) : len(MAGIC) + 32]
    length = int.from_bytes(head[len(MAGIC) + 32 :], "little")
    if length != size - _HEADER:
        raise InputError(
            f"{name} declares a {length}-byte payload but holds {size - _HEADER} bytes after its header "
            "(truncated or extended file)"
        )
    return digest, length


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_Bad = Callable[[str, str], ValueError]


def _check_counters(payload: Mapping[str, Any], iteration: int | None, bad: _Bad) -> None:
    """Iteration, epoch and epoch length: well-formed, and the epoch the one ignite counts."""
    it, epoch, length = payload["iteration"], payload["epoch"], payload.get("epoch_length")
    if not _is_int(it) or it < 0:
        raise bad("iteration", f"must be a non-negative integer but is {it!r}")
    if iteration is not None and it != iteration:
        raise bad("iteration", f"is {it} but the file name says {iteration}")
    if not _is_int(epoch) or epoch < 0:
        raise bad("epoch", f"must be a non-negative integer but is {epoch!r}")
    _check_epoch_length(it, epoch, length, bad)


def _check_epoch_length(it: int, epoch: int, length: Any, bad: _Bad) -> None:
    """The epoch length is present once the run has started, and puts iteration ``it`` in ``epoch``."""
    if length is None:
        if it:
            raise bad("epoch_length", "is missing but the run had started")
    elif not _is_int(length) or length < 1:
        raise bad("epoch_length", f"must be a positive integer but is {length!r}")
    elif epoch != -(-it // length):  # ignite's epoch counter during (or at the end of) epoch ceil(it / length)
        raise bad("epoch", f"is {epoch} but iteration {it} at {length} iterations per epoch is in epoch {-(-it // length)}")


def _check_loader_fields(payload: Mapping[str, Any], bad: _Bad) -> None:
    """The training loader's batch size and sampler length (where the resumable sampler is placed)."""
    for field in ("batch_size", "sampler_length"):
        value = payload.get(field)
        if value is not None and (not _is_int(value) or value < (1 if field == "batch_size" else 0)):
            raise bad(field, f"must be a positive integer or null but is {value!r}")


def _check_ranks(payload: Mapping[str, Any], bad: _Bad) -> None:
    """The per-rank part: one entry per process, in rank order, each with its states."""
    ranks, world_size = payload["ranks"], payload.get("world_size")
    if not _is_int(world_size) or world_size < 1:
        raise bad("world_size", f"must be a positive integer but is {world_size!r}")
    if not isinstance(ranks, list) or len(ranks) != world_size:
        got = len(ranks) if isinstance(ranks, list) else type(ranks).__name__
        raise bad("ranks", f"must list the states of {world_size} process(es) but holds {got}")
    for r, entry in enumerate(ranks):
        _check_rank_entry(r, entry, bad)


def _check_rank_entry(r: int, entry: Any, bad: _Bad) -> None:
    if not isinstance(entry, Mapping) or entry.get("rank") != r:
        raise bad(f"ranks[{r}]", f"must be the state of rank {r} (a mapping with 'rank': {r})")
    for field in ("objects", "rng"):
        if not isinstance(entry.get(field), Mapping):
            raise bad(f"ranks[{r}].{field}", "must map names to saved states")


def _check_trainer_state(payload: Mapping[str, Any], bad: _Bad) -> None:
    """The trainer's saved counters (what ignite restores) agree with the checkpoint's own."""
    engine = payload["objects"].get("trainer")
    if not (isinstance(engine, Mapping) and isinstance(engine.get("engine"), Mapping)):
        return
    engine = engine["engine"]
    it, length = payload["iteration"], payload.get("epoch_length")
    for field, value in (("iteration", it), ("epoch_length", length)):
        if field in engine and engine[field] != value:
            raise bad(f"objects.trainer.{field}", f"is {engine[field]!r} but the checkpoint's {field} is {value!r}")
    _check_max_epochs(engine.get("max_epochs"), it, length, bad)


def _check_max_epochs(max_epochs: Any, it: int, length: int | None, bad: _Bad) -> None:
    """The trainer's ``max_epochs``: a positive integer, not before the checkpoint's iteration."""
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < 1):
        raise bad("objects.trainer.max_epochs", f"must be a positive integer but is {max_epochs!r}")
    if max_epochs is not None and length is not None and it > length * max_epochs:
        raise bad("iteration", f"is {it}, past the run's end ({max_epochs} epochs of {length} iterations)")


def validate_checkpoint(payload: Mapping[str, Any], name: str, iteration: int | None = None) -> None:
    """Checks the structure of every field a resume trusts, and that they agree with each other.

    Args:
        payload: a loaded checkpoint.
        name: the file name (for the message).
        iteration: the iteration the file name says (``None``: not known).

    Raises:
        InputError: one line naming the field and what is wrong with it.
    """
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{name} is not a lilaw-med checkpoint (format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    missing = {"iteration", "epoch", "objects", "ranks"} - set(payload)
    if missing:
        raise InputError(f"{name} lacks {sorted(missing)} (incomplete checkpoint)")

    def bad(field: str, why: str) -> ValueError:
        return InputError(f"{name}: field '{field}' {why} (corrupt or crafted checkpoint)")

    _check_counters(payload, iteration, bad)
    _check_loader_fields(payload, bad)
    if not isinstance(payload["objects"], Mapping):
        raise bad("objects", "must map names to saved states")
    _check_ranks(payload, bad)
    _check_trainer_state(payload, bad)


def read_checkpoint(
    info: CheckpointInfo | str | Path, map_location: str | torch.device = "cpu", max_bytes: int | None = None
) -> dict[str, Any]:
    """Reads and verifies one checkpoint: size, digest, ``torch.load(weights_only=True)``, structure.

    Args:
        info: the checkpoint (a :class:`CheckpointInfo` also checks the size and hash the index recorded).
        map_location: where tensors are loaded.
        max_bytes: refuse, before reading it, a file larger than this (``None``: no limit).

    Returns:
        The checkpoint dict (``format``, ``iteration``, ``epoch``, ``epoch_length``, ``objects``,
        ``ranks``, ...).

    Raises:
        InputError: when the file is too large, truncated, corrupt, not a lilaw-med checkpoint, does not
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
        raise InputError(f"{info.path.name} cannot be read: {one_line(e, limit=200, with_type=True)}") from e
    if not isinstance(payload, dict):
        raise InputError(f"{info.path.name} is not a lilaw-med checkpoint (it holds a {type(payload).__name__})")
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
        InputError: when every checkpoint is invalid (the reasons are listed).
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
    raise InputError(f"every checkpoint in {save_dir} is unusable: {reasons}.")


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
