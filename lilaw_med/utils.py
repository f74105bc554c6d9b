"""Small shared helpers: atomic writes."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMULA_START", "atomic_save_torch", "atomic_write", "guard_csv_text", "unguard_csv_text"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Writes ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the new one, never a partial write; a crash leaves at
    most a stray ``.tmp`` file beside it.

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
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
    payload = data.encode(encoding) if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
        raise
    _fsync_dir(path.parent)
    return path


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
