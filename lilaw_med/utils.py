"""Small shared helpers: atomic writes."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "FORMULA_START",
    "atomic_save_torch",
    "atomic_write",
    "atomic_writer",
    "guard_csv_text",
    "unguard_csv_text",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "wb", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path`` to write in; on a clean exit, fsyncs it and renames it.

    The streaming form of :func:`atomic_write`, for results written piece by piece: the file gets
    the same permissions (``0o666`` less the umask, not ``mkstemp``'s ``0600``) and the same
    durability (the file and its folder are fsynced). When the block raises, the temporary file is
    removed and the destination is left as it was.

    Example::

        with atomic_writer(out / "audit.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)

    Args:
        path: the destination; its folder is created when missing.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding for ``"w"``.
        newline: newline translation for ``"w"`` (as :func:`open`).

    Yields:
        The open temporary file.

    Raises:
        OSError: when the folder cannot be created or written (disk full, no permission); the
            message names the destination.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
    in_block = False
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            in_block = True
            yield f
            in_block = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # the block's own errors pass through as raised: they need not be about this file
        if isinstance(e, OSError) and not in_block:
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Writes ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the new one, never a partial write; a crash leaves at
    most a stray ``.tmp`` file beside it. The file gets ``0o666`` less the umask.

    Args:
        path: the destination; its folder is created when missing.
        data: the content (``str`` is encoded with ``encoding``).
        encoding: text encoding for ``str`` data.

    Returns:
        The destination path.

    Raises:
        OSError: when the folder cannot be created or written (disk full, no permission); the
            destination is left as it was.
    """
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_writer(path) as f:
        try:
            f.write(payload)
        except OSError as e:
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
    return Path(path)


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` with the atomicity of :func:`atomic_write`.

    Args:
        obj: what to save (tensors, dicts of tensors and plain Python values, so that
            ``torch.load(..., weights_only=True)`` can read it back).
        path: the destination.

    Returns:
        The destination path.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getvalue())


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not supported on every platform/filesystem
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)



FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet run a cell as a formula (OWASP's CSV-injection list)."""


def guard_csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula: a leading ``'`` before ``=``, ``+``, ``-``,
    ``@``, tab or CR (OWASP). Numbers are not text cells: write them as numbers.

    Args:
        text: the cell's text.

    Returns:
        ``text``, or ``"'" + text`` when it starts with one of :data:`FORMULA_START`.
    """
    return "'" + text if text.startswith(FORMULA_START) else text


def unguard_csv_text(text: str) -> str:
    """Undoes :func:`guard_csv_text` (a ``'`` that guards nothing is part of the value)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START) else text
