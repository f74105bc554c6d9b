"""The predictions CSV: its columns, its rows, how a cell is written, and the file written as rows are made."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lilaw_med.utils import guard_csv_text

__all__ = ["PredictionWriter", "csv_cell", "error_cell", "error_row", "header"]

logger = logging.getLogger(__name__)


def header(names: Sequence[str]) -> list[str]:
    """The CSV's columns for the class (or label) ``names``."""
    return ["id", "path", "kind", "predicted_label", "predicted_class", "num_patches",
            *[f"prob_{n}" for n in names], "error"]


def error_cell(error: BaseException) -> str:
    """The ``error`` cell of an input that gets no prediction: the message on one line, whole sentences
    kept (the cell repeats the pre-flight check's text), with the type unless it is a ``ValueError`` or
    ``OSError`` (whose messages name the file and the problem), at most 500 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text[:500]


def error_row(names: Sequence[str], error: str) -> list[Any]:
    """The row cells after ``kind`` of an input that gets no prediction: empty, and the error."""
    return ["", "", "", *([""] * len(names)), error]


def csv_cell(value: Any) -> Any:
    """Numbers as numbers (floats to 6 decimals), text guarded against spreadsheet formulas."""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, str):
        return guard_csv_text(value)
    return value


class PredictionWriter:
    """The predictions CSV, written row by row to ``OUTPUT.partial`` and renamed to ``OUTPUT`` at the end.

    Rows reach the disk batch by batch (:meth:`flush`), so memory stays flat and a crash keeps the
    rows done in the partial file; the output itself appears only complete (fsync, then
    ``os.replace``, as :func:`lilaw_med.utils.atomic_write` writes). On an exception the partial
    file stays and an error line names it and the rows it holds.

    Example::

        with PredictionWriter("preds.csv", header(names)) as writer:
            writer.write_rows(rows)
            writer.flush()

    Args:
        path: the output CSV.
        columns: its header row.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(f"{self.path.name}.partial")
        self.columns = list(columns)
        self.rows = 0
        self._file: Any = None
        self._writer: Any = None

    def __enter__(self) -> PredictionWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.partial.open("w", newline="", encoding="utf-8")
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.partial}: {e.strerror}") from e
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow([csv_cell(c) for c in self.columns])
        logger.info("writing rows to %s as they are made; it becomes %s when every input is done", self.partial,
                    self.path)
        return self

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Writes rows (cells in column order; see :func:`csv_cell`)."""
        for row in rows:
            self._writer.writerow([csv_cell(v) for v in row])
            self.rows += 1

    def flush(self) -> None:
        """Hands the rows written so far to the operating system (one call per batch)."""
        self._file.flush()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            logger.error("predict stopped after %d row(s): they are in %s; %s was not written", self.rows,
                         self.partial, self.path)
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial, self.path)
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.path}: {e.strerror}") from e
        with contextlib.suppress(OSError):  # makes the rename durable where the platform allows
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
