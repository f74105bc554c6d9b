"""Datalists: MONAI decathlon-style JSON and CSV, resolved to items with stable ids and groups.

A resolved item is ``{"id", "image" (absolute path), "label" (class index, 0/1 flags or None),
"group", ...extra keys}``; the label, id and path conventions are in docs/data.md section 1.
The grouped splits live in :mod:`lilaw_med.data.splits` (re-exported here).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lilaw_med.data.splits import group_kfold, split_validation
from lilaw_med.errors import InputError
from lilaw_med.utils import atomic_write

__all__ = [
    "SPLITS",
    "Datalist",
    "PROBLEM_KINDS",
    "Problem",
    "ProblemKind",
    "group_kfold",
    "load_datalist",
    "save_datalist",
    "split_validation",
]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
_SPLIT_ALIASES = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
_RESERVED = ("id", "image", "label", "group")


ProblemKind = Literal[
    "no_image", "missing_label", "bad_label", "duplicate", "missing_file", "unreadable", "wrong_dims", "bad_patch"
]
"""What kind of thing is wrong with an item: the pre-flight groups and deduplicates problems by it."""
PROBLEM_KINDS: tuple[str, ...] = get_args(ProblemKind)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one datalist item (a pre-flight finding).

    Attributes:
        id: the item's id ("" when it has none yet).
        path: the item's image path ("" when it has none).
        split: the split it is in.
        reason: what is wrong, what was expected and what came.
        kind: which :data:`ProblemKind` it is: ``"no_image"`` (no ``image`` field), ``"missing_label"``,
            ``"bad_label"`` (not a class, out of range), ``"duplicate"`` (id), ``"missing_file"``,
            ``"unreadable"`` (the reader refuses the file), ``"wrong_dims"``, ``"bad_patch"`` (a
            whole-slide patch that does not lie in its slide, or a slide that does not open).
    """

    id: str
    path: str
    split: str
    reason: str
    kind: ProblemKind

    def __str__(self) -> str:
        return f"[{self.split}] {self.id or '?'} ({self.path or 'no path'}): {self.reason}"


@dataclass
class Datalist:
    """The resolved splits of a datalist.

    Attributes:
        training: training items.
        validation: validation items (split off the training list when the file has none).
        test: test items (may be empty).
        class_names: the class names, index = class index; ``None`` when labels were given as
            indices without names.
        source: the datalist file it was read from.
        noise_sidecar: the CSV with each item's true label when the labels carry injected noise.
        multi_label: labels are 0/1 lists (one flag per class).
        problems: item problems found while loading with ``strict=False`` (the pre-flight check
            reports them); always empty after a strict load.
        validation_split_off: the file had no validation split, so :func:`load_datalist` split it off
            the training items.
    """

    training: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    class_names: list[str] | None = None
    source: Path = field(default_factory=Path)
    noise_sidecar: Path | None = None
    multi_label: bool = False
    problems: list[Problem] = field(default_factory=list)
    validation_split_off: bool = False

    def split(self, name: str) -> list[dict[str, Any]]:
        """Returns the items of split ``name`` ("training", "validation" or "test")."""
        if name not in SPLITS:
            raise InputError(f"split must be one of {SPLITS} but is {name!r}.")
        return getattr(self, name)

    def iter_items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yields ``(split, item)`` over all splits in the order training, validation, test."""
        for name in SPLITS:
            for item in getattr(self, name):
                yield name, item

    @property
    def num_classes(self) -> int:
        """The number of classes: ``len(class_names)``, else inferred from the labels."""
        if self.class_names is not None:
            return len(self.class_names)
        best = 0
        for _, item in self.iter_items():
            label = item.get("label")
            if label is None:
                continue
            best = max(best, len(label) if isinstance(label, list) else int(label) + 1)
        return best

    def without_ids(self, ids: set[str] | frozenset[str]) -> Datalist:
        """Returns a copy without the items whose id is in ``ids`` (problems kept as they are)."""
        return replace(
            self,
            training=[it for it in self.training if it["id"] not in ids],
            validation=[it for it in self.validation if it["id"] not in ids],
            test=[it for it in self.test if it["id"] not in ids],
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form written by :func:`save_datalist` (absolute paths, ids, class indices)."""
        out: dict[str, Any] = {
            "class_names": self.class_names,
            "multi_label": self.multi_label,
        }
        if self.noise_sidecar is not None:
            out["noise_sidecar"] = str(self.noise_sidecar)
        for name in SPLITS:
            out[name] = [dict(item) for item in getattr(self, name)]
        return out


def load_datalist(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    multi_label: bool = False,
    base_dir: str | os.PathLike | None = None,
    require_training: bool = True,
    strict: bool = True,
) -> Datalist:
    """Reads a decathlon-style JSON or a CSV datalist and resolves it.

    JSON: ``{"training": [...], "validation": [...], "test": [...]}`` with items
    ``{"image": path, "label": ..., "id"?: str, "group"?: str, ...}``; optional top-level
    ``"class_names"``, ``"multi_label"`` and ``"noise_sidecar"``. CSV: a header with ``image``
    and ``label`` and optionally ``split`` (training/train, validation/val, test), ``group``,
    ``id``; other columns are kept as extra keys (strings).

    Relative image paths are resolved against ``base_dir`` (default: the datalist's folder).
    An item without ``id`` gets one derived from its image path relative to that folder (posix
    form, plus ``@x_y`` from a ``location`` key for whole-slide patches), which is stable across
    runs and machines. When there is no validation split, ``val_fraction`` of the training
    items is split off, stratified by label and grouped (see :func:`split_validation`).

    Args:
        path: the ``.json`` or ``.csv`` file.
        class_names: the class list (index = class index); overrides nothing silently: when the
            JSON also has ``"class_names"`` they must agree.
        val_fraction: fraction of training items split off as validation when none is given.
        seed: seed of that split.
        multi_label: labels are lists (0/1 flags or class names); also switched on by a JSON
            ``"multi_label": true`` or when every label is a list.
        base_dir: folder relative image paths are resolved against.
        require_training: raise when the training split is missing or empty (off for a
            prediction-only list).
        strict: raise on any item problem (duplicate id, missing or bad label, missing image
            key). With ``False`` the bad items are kept (their bad label set to ``None``) and
            the problems are returned in ``Datalist.problems`` for the pre-flight report.

    Returns:
        The resolved :class:`Datalist`.

    Example::

        dl = load_datalist("data/datalist.json", val_fraction=0.2, seed=1)
        dl.training[0]["id"]  # the image path relative to the datalist's folder: 'images/p1_0.dcm'
        checked = load_datalist("data/datalist.json", strict=False).problems  # bad items kept, listed

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        InputError: for a file that is not valid JSON/CSV, an empty training split, or (with
            ``strict``) items with problems; the message lists every bad item and field.
    """
    path = Path(path).expanduser()
    base = _check_arguments(path, val_fraction, base_dir)
    raw, meta = _read_raw(path)
    names = _class_names(path, class_names, meta.get("class_names"))
    if require_training and not raw["training"]:
        raise InputError(f"{path}: the 'training' split is missing or empty.")
    multi = _is_multi_label(raw, bool(multi_label or meta.get("multi_label")))
    if names is None:
        names = _names_from_labels(raw, multi)

    resolved, problems = _resolve_splits(raw, base, names, multi)
    if strict and problems:
        _raise_problems(path, problems)

    datalist = Datalist(
        training=resolved["training"],
        validation=resolved["validation"],
        test=resolved["test"],
        class_names=names,
        source=Path(os.path.abspath(path)),
        noise_sidecar=_sidecar_path(path, meta.get("noise_sidecar")),
        multi_label=multi,
        problems=problems,
    )
    if not datalist.validation and datalist.training:
        _split_off_validation(datalist, path, val_fraction, seed)
    return datalist


def _check_arguments(path: Path, val_fraction: float, base_dir: str | os.PathLike | None) -> str:
    """Checks the file and the fraction; returns the absolute folder relative image paths start from."""
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1) but is {val_fraction}.")
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    return os.path.abspath(base)


def _resolve_splits(
    raw: Mapping[str, list[dict[str, Any]]], base: str, names: list[str] | None, multi: bool
) -> tuple[dict[str, list[dict[str, Any]]], list[Problem]]:
    """Every split's items resolved, and the problems found (bad items, then duplicate ids)."""
    problems: list[Problem] = []
    resolved = {
        split: [_resolve_item(item, split, i, base, names, multi, problems) for i, item in enumerate(raw[split])]
        for split in SPLITS
    }
    problems.extend(_duplicate_problems(resolved))
    return resolved, problems


def _class_names(path: Path, given: Sequence[str] | None, in_file: Any) -> list[str] | None:
    """The class list: the argument, else the file's ``"class_names"`` (both given must agree)."""
    if in_file is not None:
        _check_file_class_names(path, in_file)
        if given is not None and list(given) != in_file:
            raise InputError(
                f"{path}: class_names given ({list(given)}) differ from the file's 'class_names' "
                f"({in_file})."
            )
    names = list(given) if given is not None else in_file
    if names is not None and len(set(names)) != len(names):
        raise InputError(f"class_names must be unique but are {names}.")
    return names


def _check_file_class_names(path: Path, in_file: Any) -> None:
    if not isinstance(in_file, list) or not all(isinstance(n, str) for n in in_file):
        raise InputError(f"{path}: 'class_names' must be a list of strings but is {in_file!r}.")


def _is_multi_label(raw: Mapping[str, list[dict[str, Any]]], requested: bool) -> bool:
    """Multi-label when asked for, or when every given label is a list."""
    labels_are_lists = [
        isinstance(it.get("label"), list) for _, it in _iter_raw(raw) if it.get("label") is not None
    ]
    return bool(requested or (labels_are_lists and all(labels_are_lists)))


def _duplicate_problems(resolved: Mapping[str, list[dict[str, Any]]]) -> list[Problem]:
    """One problem per id held by several items (an image listed twice, possibly in two splits, is a leak)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for split in SPLITS:
        for item in resolved[split]:
            if item.get("id"):
                seen[item["id"]].append(split)
    return [
        Problem(
            item_id, "", ",".join(sorted(set(where))), f"duplicate id: {len(where)} items in {where}", "duplicate"
        )
        for item_id, where in seen.items()
        if len(where) > 1
    ]


def _raise_problems(path: Path, problems: Sequence[Problem]) -> None:
    """Raises one error listing the first 50 problems (a strict load)."""
    shown = "\n  ".join(str(p) for p in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    raise InputError(f"{path}: {len(problems)} bad datalist item(s):\n  {shown}{more}")


def _sidecar_path(path: Path, sidecar: Any) -> Path | None:
    """The noise sidecar's absolute path (a relative one is relative to the datalist's folder)."""
    if not sidecar:
        return None
    sidecar_path = Path(sidecar).expanduser()
    if sidecar_path.is_absolute():
        return sidecar_path
    return Path(os.path.abspath(path.parent / sidecar_path))


def _split_off_validation(datalist: Datalist, path: Path, val_fraction: float, seed: int) -> None:
    """Moves a grouped, stratified ``val_fraction`` of the training items to validation."""
    train, val = split_validation(datalist.training, val_fraction, seed)
    datalist.training, datalist.validation = train, val
    datalist.validation_split_off = True
    logger.info(
        "%s: no validation split; split off %d of %d training items (grouped, stratified, seed %d)",
        path.name,
        len(val),
        len(train) + len(val),
        seed,
    )


def save_datalist(datalist: Datalist, path: str | os.PathLike) -> Path:
    """Writes the resolved datalist as JSON, atomically (a run folder keeps this copy).

    Reading it back with :func:`load_datalist` gives the same items, ids, classes and splits.

    Args:
        datalist: what to write.
        path: the destination ``.json``.

    Returns:
        The destination path.
    """
    return atomic_write(path, json.dumps(datalist.to_json_dict(), indent=1, default=_json_default) + "\n")


# ---------------------------------------------------------------------------------------------
# helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a datalist JSON.")


def _read_raw(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Reads the file into raw split lists (unresolved) and top-level metadata."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path), {}
    data = _read_json(path)
    raw = {split: _json_split(path, split, data.get(split)) for split in SPLITS}
    meta = {k: data.get(k) for k in ("class_names", "multi_label", "noise_sidecar")}
    return raw, meta


def _read_json(path: Path) -> dict[str, Any]:
    """The datalist JSON's top-level object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e}); expected a decathlon-style datalist or a .csv."
        ) from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text file ({e}); expected a .json or .csv datalist.") from e
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected a JSON object with 'training'/'validation'/'test' lists but got {type(data).__name__}."
        )
    return data


def _json_split(path: Path, split: str, value: Any) -> list[dict[str, Any]]:
    """One split's list of item objects (a missing or null split is empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{path}: '{split}' must be a list of items but is {type(value).__name__}.")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InputError(
                f"{path}: {split}[{i}] must be an object with 'image' and 'label' but is {item!r}."
            )
    return value


def _read_csv(path: Path) -> dict[str, list[dict[str, Any]]]:
    fields, rows = _csv_rows(path)
    if "image" not in fields or "label" not in fields:
        raise InputError(
            f"{path}: the CSV header must have 'image' and 'label' columns (plus optional split, group, id) but has {fields}."
        )
    raw: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        split = _csv_split(path, line, row.pop("split", ""))
        raw[split].append(_csv_item(row))
    return raw


def _csv_split(path: Path, line: int, value: str | None) -> str:
    """The split a CSV row names (empty: training), by its aliases."""
    split_name = (value or "training").lower()
    split = _SPLIT_ALIASES.get(split_name)
    if split is None:
        raise InputError(
            f"{path}: line {line}: split must be one of training/validation/test but is {split_name!r}."
        )
    return split


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV's stripped header and its rows."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            return fields, list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV ({e}).") from e


def _csv_item(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row as a raw item: an empty label/group is ``None``, ``a;b`` a list, an empty id absent."""
    label = row.get("label")
    if label == "":
        row["label"] = None
    elif isinstance(label, str) and ";" in label:
        row["label"] = [t.strip() for t in label.split(";") if t.strip()]
    if row.get("group") == "":
        row["group"] = None
    if row.get("id") == "":
        row.pop("id")
    return row


def _iter_raw(raw: Mapping[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for split in SPLITS:
        for item in raw[split]:
            yield split, item


def _is_int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _names_from_labels(raw: Mapping[str, list[dict[str, Any]]], multi: bool) -> list[str] | None:
    """The sorted unique class names when labels are given as names; ``None`` for indices."""
    found: set[str] = set()
    for _, item in _iter_raw(raw):
        label = item.get("label")
        values = label if isinstance(label, list) else [label]
        for v in values:
            if isinstance(v, str) and not _is_int_like(v):
                found.add(v)
    return sorted(found) if found else None


def _to_index(value: Any, names: list[str] | None) -> int:
    """A class index from an int, a string of digits or a class name; raises ValueError."""
    if isinstance(value, str) and names is not None and value in names:
        return names.index(value)
    if _is_int_like(value):
        return _checked_index(value, names)
    if isinstance(value, str):
        raise InputError(f"unknown class name {value!r}: expected one of {names}")
    raise InputError(f"label must be a class index or name but is {value!r} ({type(value).__name__})")


def _checked_index(value: Any, names: list[str] | None) -> int:
    """An int-like label as a class index in range."""
    index = int(float(value)) if isinstance(value, float) else int(value)
    if index < 0 or (names is not None and index >= len(names)):
        bound = f"[0, {len(names) - 1}]" if names is not None else ">= 0"
        raise InputError(f"label {value!r} out of range: expected a class index in {bound}")
    return index


def _is_flags(value: list[Any], names: list[str] | None) -> bool:
    """A non-empty list of 0/1 values, none of them a class name."""
    return (
        bool(value)
        and all(_is_int_like(v) and int(v) in (0, 1) for v in value)
        and not any(isinstance(v, str) and names is not None and v in names for v in value)
    )


def _to_multi_hot(value: Any, names: list[str] | None) -> list[int]:
    if not isinstance(value, list):
        raise InputError(f"multi-label items need a list label (0/1 flags or class names) but got {value!r}")
    if _is_flags(value, names):
        flags = [int(v) for v in value]
        if names is not None and len(flags) != len(names):
            raise InputError(
                f"multi-label flags have length {len(flags)} but there are {len(names)} classes {names}"
            )
        return flags
    if names is None:
        raise InputError(f"multi-label label {value!r} needs class_names to map names to flags")
    flags = [0] * len(names)
    for v in value:
        flags[_to_index(v, names)] = 1
    return flags


def _resolve_item(
    item: Mapping[str, Any],
    split: str,
    index: int,
    base: str,
    names: list[str] | None,
    multi: bool,
    problems: list[Problem],
) -> dict[str, Any]:
    """One raw item resolved (absolute image, id, class-index label, group); its problems appended."""
    extra = {k: v for k, v in item.items() if k not in _RESERVED}
    image, rel = _resolve_image(item.get("image"), base)
    if image == "":
        problems.append(
            Problem(
                str(item.get("id") or ""),
                "",
                split,
                f"{split}[{index}]: 'image' missing or empty (got {item.get('image')!r})",
                "no_image",
            )
        )
    out: dict[str, Any] = {"id": _item_id(item, rel), **extra, "image": image}
    out["label"] = _resolve_label(item.get("label"), out, split, names, multi, problems)
    group = item.get("group")
    out["group"] = None if group in (None, "") else str(group)
    return out


def _resolve_image(image: Any, base: str) -> tuple[str | list[str], str]:
    """The absolute image path (or list of paths) and its id-relative form; ``("", "")`` when missing."""
    if isinstance(image, (list, tuple)) and image and all(isinstance(p, str) and p for p in image):
        resolved_list = [_resolve_path(p, base) for p in image]
        return resolved_list, _relative_id(resolved_list[0], base)
    if isinstance(image, str) and image.strip():
        resolved = _resolve_path(image.strip(), base)
        return resolved, _relative_id(resolved, base)
    return "", ""


def _item_id(item: Mapping[str, Any], rel: str) -> str:
    """The item's ``id``, else its relative image path (``@x_y`` added for a slide patch's location)."""
    item_id = item.get("id")
    if item_id not in (None, ""):
        return str(item_id)
    if rel and "location" in item:
        loc = item["location"]
        loc_s = "_".join(str(int(v)) for v in loc) if isinstance(loc, (list, tuple)) else str(loc)
        return f"{rel}@{loc_s}"
    return rel


def _resolve_label(
    label: Any, out: Mapping[str, Any], split: str, names: list[str] | None, multi: bool, problems: list[Problem]
) -> int | list[int] | None:
    """The label as a class index (or 0/1 flags); ``None`` with a problem when missing or bad."""
    if label is None or label == "":
        if split != "test":
            problems.append(Problem(out["id"], str(out["image"]), split, "label missing", "missing_label"))
        return None
    try:
        return _to_multi_hot(label, names) if multi else _to_index(label, names)
    except ValueError as e:
        problems.append(Problem(out["id"], str(out["image"]), split, f"field 'label': {e}", "bad_label"))
        return None


def _resolve_path(p: str, base: str) -> str:
    # string operations, not Path objects: a million items resolve in seconds, not tens of seconds
    if p.startswith("~"):
        p = os.path.expanduser(p)
    return os.path.normpath(os.path.join(base, p))  # base is absolute; join keeps an absolute p


def _relative_id(resolved: str, base: str) -> str:
    # the id is the path relative to the datalist folder in posix form: stable across machines
    prefix = os.path.join(base, "")
    if resolved.startswith(prefix):
        rel = resolved[len(prefix) :]  # both normalised: relpath's answer without its two abspath calls
    else:
        try:
            rel = os.path.relpath(resolved, base)
        except ValueError:  # another drive on Windows
            rel = resolved
    return rel.replace(os.sep, "/") if os.sep != "/" else rel
