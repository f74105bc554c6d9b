"""The predictions CSV: its columns, its rows and how a cell is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lilaw_med.utils import guard_csv_text

__all__ = ["csv_cell", "error_row", "header", "one_line"]


def header(names: Sequence[str]) -> list[str]:
    """The CSV's columns for the class (or label) ``names``."""
    return ["id", "path", "kind", "predicted_label", "predicted_class", "num_patches",
            *[f"prob_{n}" for n in names], "error"]


def one_line(error: BaseException) -> str:
    """An exception as one short line (readers' messages may span lines or quote whole headers)."""
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
