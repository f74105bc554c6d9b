"""Curation of a datalist after an audit: drop items (``--exclude``) or correct labels (``--relabel``).

Both read a CSV with an ``id`` column: an exclusion list (any other columns), a relabel list
(``id`` and one of :data:`LABEL_COLUMNS`), or a reader's decision file (a ``decision`` column,
:data:`DECISION_COLUMNS`: ``--exclude`` applies its ``exclude`` rows, ``--relabel`` its ``relabel``
rows). An id the datalist does not hold is an error, never skipped silently. See docs/audit.md.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lilaw_med.data.datalist import SPLITS, Datalist
from lilaw_med.errors import InputError
from lilaw_med.utils import unguard_csv_text

__all__ = [
    "DECISIONS",
    "DECISION_COLUMNS",
    "LABEL_COLUMNS",
    "RECORD_KEYS",
    "apply_exclusions",
    "apply_relabels",
    "decision_rows",
    "read_id_csv",
]

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "new_label", "corrected_label")
DECISION_COLUMNS = ("id", "decision", "new_label", "note", "reviewer", "time")
"""Columns of a reader's decision file, as the review page saves it: ``decision`` one of
:data:`DECISIONS`, ``new_label`` the class a ``relabel`` gives (name, or index where the names are
numbers), ``note`` free text, ``reviewer`` the reader's name, ``time`` ISO 8601 (UTC)."""
RECORD_KEYS = ("label_before_relabel",)
"""Keys curation adds to some items for the run's record (``datalist.json``), never for loading: the
transform chain drops them, since a batch of relabelled and untouched items would not collate."""
DECISIONS = ("keep", "relabel", "exclude", "skip")
"""A reader's decisions: the label is right (``keep``), wrong with another class (``relabel``), the
case cannot be used (``exclude``), or not decided (``skip``)."""


def read_id_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Reads a CSV with an ``id`` column (UTF-8, a BOM allowed).

    Args:
        path: the CSV file.

    Returns:
        Its rows as dicts (values stripped; a leading ``'`` that guards a formula-like value, as
        ``lilaw-med audit`` writes it, removed).

    Raises:
        FileNotFoundError: when the file is missing.
        InputError: when it has no ``id`` column or a row has an empty id.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CSV not found: {p}")
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "id" not in fields:
            raise InputError(f"{p}: a column named 'id' is required (found columns {fields}).")
        return [_clean_row(row, p, line) for line, row in enumerate(reader, start=2)]


def _clean_row(row: dict[str | None, Any], path: Path, line: int) -> dict[str, str]:
    """A row with stripped, unguarded values (cells beyond the header dropped); its id must not be empty."""
    clean = {(k or "").strip(): unguard_csv_text((v or "").strip()) for k, v in row.items() if k is not None}
    if not clean.get("id"):
        raise InputError(f"{path}, line {line}: empty id.")
    return clean


def decision_rows(rows: list[dict[str, str]], decision: str, source: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a decision file with one decision; every row's decision is checked.

    Args:
        rows: the file's rows (:func:`read_id_csv`), with a ``decision`` column.
        decision: one of :data:`DECISIONS`.
        source: the file, for messages.

    Returns:
        The rows whose ``decision`` is ``decision``.

    Raises:
        InputError: on a decision that is not one of :data:`DECISIONS`.
    """
    for line, r in enumerate(rows, start=2):
        if r.get("decision", "") not in DECISIONS:
            raise InputError(f"{source}, line {line} (id {r['id']!r}): decision {r.get('decision', '')!r} is not one "
                             f"of {list(DECISIONS)}.")
    counts = Counter(r["decision"] for r in rows)
    logger.info("%s: a decision file (%s); applying its %d %s row(s).", source,
                ", ".join(f"{counts[d]} {d}" for d in DECISIONS if counts[d]), counts[decision], decision)
    return [r for r in rows if r["decision"] == decision]


def _known_ids(datalist: Datalist) -> dict[str, str]:
    return {str(item["id"]): split for split, item in datalist.iter_items()}


def _check_unknown(ids: Iterable[str], known: dict[str, str], source: Path) -> None:
    unknown = sorted({i for i in ids if i not in known})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise InputError(
            f"{source}: {len(unknown)} id(s) not in the datalist: {shown}. Use the ids of the run's datalist.json "
            "(the audit's CSV files carry them)."
        )


def apply_exclusions(datalist: Datalist, csv_path: str | os.PathLike) -> Datalist:
    """Removes the items whose ids a CSV lists, from every split.

    Args:
        datalist: the datalist (not modified).
        csv_path: a CSV with an ``id`` column (e.g. the audit's ``exclude.csv``), or a decision file
            (a ``decision`` column: its ``exclude`` rows).

    Returns:
        A new :class:`Datalist` without those items.

    Example::

        kept = apply_exclusions(load_datalist("data/datalist.json"), "runs/r1/audit/exclude.csv")

    Raises:
        FileNotFoundError: when the CSV is missing.
        InputError: on an id the datalist does not hold, or a malformed CSV.
    """
    rows = read_id_csv(csv_path)
    if rows and "decision" in rows[0]:
        _check_unknown((r["id"] for r in rows), _known_ids(datalist), Path(csv_path))
        rows = decision_rows(rows, "exclude", csv_path)
    ids = {r["id"] for r in rows}
    _check_unknown(ids, _known_ids(datalist), Path(csv_path))
    return datalist.without_ids(frozenset(ids))


def _parse_label(value: str, datalist: Datalist, source: str) -> int | list[int]:
    if datalist.multi_label:
        return _parse_flags(value, datalist, source)
    names = datalist.class_names
    n = datalist.num_classes
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < n:
            raise InputError(f"{source}: label {k} is out of range: expected a class index in [0, {n - 1}].")
        return k
    if names is not None and value in names:
        return names.index(value)
    raise InputError(f"{source}: unknown label {value!r}: expected a class index or one of {names}.")


def _are_flags(parts: list[str], n: int) -> bool:
    return bool(parts) and all(p in ("0", "1") for p in parts) and len(parts) == n


def _parse_flags(value: str, datalist: Datalist, source: str) -> list[int]:
    """A multi-label value: ``;``-separated 0/1 flags (one per class) or class names."""
    names = datalist.class_names
    n = datalist.num_classes
    parts = [p.strip() for p in value.split(";") if p.strip()]
    if _are_flags(parts, n):
        return [int(p) for p in parts]
    flags = [0] * n
    for p in parts:
        if names is None or p not in names:
            raise InputError(f"{source}: unknown class {p!r}; the classes are {names}.")
        flags[names.index(p)] = 1
    return flags


def apply_relabels(datalist: Datalist, csv_path: str | os.PathLike) -> Datalist:
    """Replaces the labels of the items a CSV lists (a reader's corrections).

    Args:
        datalist: the datalist (not modified).
        csv_path: a CSV with ``id`` and ``label`` (or ``new_label`` / ``corrected_label``) columns, or a
            decision file (a ``decision`` column: its ``relabel`` rows, label in ``new_label``).

    Returns:
        A new :class:`Datalist` whose listed items carry the new labels (and
        ``"label_before_relabel"``).

    Example::

        fixed = apply_relabels(load_datalist("data/datalist.json"), "decisions.csv")  # its relabel rows

    Raises:
        FileNotFoundError: when the CSV is missing.
        InputError: on an id the datalist does not hold, an id listed twice with different labels,
            a missing label column, or an unknown class.
    """
    source = Path(csv_path)
    rows = read_id_csv(source)
    if rows and "decision" in rows[0]:
        # only the relabel rows' ids must be here: --exclude (applied first) removes the excluded ones
        rows = decision_rows(rows, "relabel", source)
        if not rows:
            return datalist
    column = _label_column(rows, source)
    _check_unknown((r["id"] for r in rows), _known_ids(datalist), source)
    new = _new_labels(rows, column, datalist, source)
    return replace(datalist, **{s: _relabelled(getattr(datalist, s), new) for s in SPLITS})


def _label_column(rows: list[dict[str, str]], source: Path) -> str | None:
    """The first of :data:`LABEL_COLUMNS` the rows have (``None`` only when there are no rows)."""
    column = next((c for c in LABEL_COLUMNS if rows and c in rows[0]), None)
    if rows and column is None:
        raise InputError(
            f"{source}: a label column is required, one of {list(LABEL_COLUMNS)} (found {sorted(rows[0])})."
        )
    return column


def _new_labels(rows: list[dict[str, str]], column: str | None, datalist: Datalist, source: Path) -> dict[str, Any]:
    """id -> the new label; an id listed twice must carry one label."""
    new: dict[str, Any] = {}
    for line, r in enumerate(rows, start=2):
        label = _parse_label(r[column], datalist, f"{source}, line {line} (id {r['id']!r})")  # type: ignore[index]
        if r["id"] in new and new[r["id"]] != label:
            raise InputError(f"{source}: id {r['id']!r} is listed twice with different labels.")
        new[r["id"]] = label
    return new


def _relabelled(items: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The items with the new labels, each relabelled one keeping ``label_before_relabel``."""
    out = []
    for item in items:
        if str(item["id"]) in new:
            item = {**item, "label_before_relabel": item.get("label"), "label": new[str(item["id"])]}
        out.append(item)
    return out
