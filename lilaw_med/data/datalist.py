"""Datalists: MONAI decathlon-style JSON and CSV, resolved to items with stable ids and groups.

A datalist item is a dict (the contract between ``data/``, ``training/`` and ``audit/``)::

    {"id": str (stable, unique), "image": str (absolute path: file or DICOM series folder),
     "label": int (class index) | list[int] (multi-label 0/1) | None (unlabelled test item),
     "group": str | None (patient, study or slide), ... extra keys kept}

Label conventions (decided here, documented in docs/data.md):

* integers (or strings of digits) are class indices;
* class names are mapped through ``class_names``; when names are used and no class list is
  given (neither as an argument nor as ``"class_names"`` in the JSON), the sorted unique names
  over all splits become the classes;
* multi-label items carry a list: either 0/1 flags (one per class) or a list of class names
  (turned into flags); in a CSV, the flags or names are separated by ``;``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

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
    """

    training: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    class_names: list[str] | None = None
    source: Path = field(default_factory=Path)
    noise_sidecar: Path | None = None
    multi_label: bool = False
    problems: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> list[dict[str, Any]]:
        """Returns the items of split ``name`` ("training", "validation" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} but is {name!r}.")
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

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a file that is not valid JSON/CSV, an empty training split, or (with
            ``strict``) items with problems; the message lists every bad item and field.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) but is {val_fraction}.")
    base = Path(base_dir).expanduser() if base_dir is not None else path.parent
    base = Path(os.path.abspath(base))

    raw, meta = _read_raw(path)
    file_names = meta.get("class_names")
    if file_names is not None:
        if not isinstance(file_names, list) or not all(isinstance(n, str) for n in file_names):
            raise ValueError(f"{path}: 'class_names' must be a list of strings but is {file_names!r}.")
        if class_names is not None and list(class_names) != file_names:
            raise ValueError(
                f"{path}: class_names given ({list(class_names)}) differ from the file's 'class_names' "
                f"({file_names})."
            )
    names = list(class_names) if class_names is not None else file_names
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique but are {names}.")

    if require_training and not raw["training"]:
        raise ValueError(f"{path}: the 'training' split is missing or empty.")

    labels_are_lists = [
        isinstance(it.get("label"), list) for _, it in _iter_raw(raw) if it.get("label") is not None
    ]
    multi = bool(multi_label or meta.get("multi_label") or (labels_are_lists and all(labels_are_lists)))

    if names is None:
        names = _names_from_labels(raw, multi)

    problems: list[Problem] = []
    resolved: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        out = []
        for index, item in enumerate(raw[split]):
            out.append(_resolve_item(item, split, index, str(base), names, multi, problems))
        resolved[split] = out

    # duplicate ids: name every one (an image listed twice, possibly in two splits, is a leak)
    seen: dict[str, list[str]] = defaultdict(list)
    for split in SPLITS:
        for item in resolved[split]:
            if item.get("id"):
                seen[item["id"]].append(split)
    for item_id, where in seen.items():
        if len(where) > 1:
            problems.append(
                Problem(
                    item_id, "", ",".join(sorted(set(where))), f"duplicate id: {len(where)} items in {where}",
                    "duplicate",
                )
            )

    if strict and problems:
        shown = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ValueError(f"{path}: {len(problems)} bad datalist item(s):\n  {shown}{more}")

    sidecar = meta.get("noise_sidecar")
    sidecar_path = None
    if sidecar:
        sidecar_path = Path(sidecar).expanduser()
        if not sidecar_path.is_absolute():
            sidecar_path = Path(os.path.abspath(path.parent / sidecar_path))

    datalist = Datalist(
        training=resolved["training"],
        validation=resolved["validation"],
        test=resolved["test"],
        class_names=names,
        source=Path(os.path.abspath(path)),
        noise_sidecar=sidecar_path,
        multi_label=multi,
        problems=problems,
    )
    if not datalist.validation and datalist.training:
        train, val = split_validation(datalist.training, val_fraction, seed)
        datalist.training, datalist.validation = train, val
        logger.info(
            "%s: no validation split; split off %d of %d training items (grouped, stratified, seed %d)",
            path.name,
            len(val),
            len(train) + len(val),
            seed,
        )
    return datalist


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


def split_validation(
    items: Sequence[Mapping[str, Any]], val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits a validation set off a training list: grouped, stratified by label, seeded.

    Whole groups (``item["group"]``, or the item itself when it has none) go to one side. Groups
    are visited in a seeded random order and one is moved to validation when that brings the
    per-class counts closer to their targets (``val_fraction * n_c``), so the size and the class
    mix of both sides match the request up to group granularity.

    Args:
        items: training items (each with ``id``, ``label`` and optionally ``group``).
        val_fraction: the fraction of items to move to validation, in (0, 1).
        seed: seed of the group order.

    Returns:
        ``(training, validation)``, each in the input order.

    Raises:
        ValueError: when the items form fewer than 2 groups (no grouped split is possible).
    """
    items = [dict(it) for it in items]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[_group_key(it)].append(i)
    if len(groups) < 2:
        raise ValueError(
            f"cannot split a validation set off the training list: its {len(items)} item(s) form "
            f"{len(groups)} group(s); give a 'validation' split or more groups."
        )
    keys = [_strat_key(it.get("label")) for it in items]
    total = Counter(keys)
    target = {k: val_fraction * c for k, c in total.items()}
    order = sorted(groups)  # deterministic before the seeded shuffle
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    taken: Counter[str] = Counter()
    val_idx: list[int] = []
    deficit = sum(target.values())
    for g in order:
        counts = Counter(keys[i] for i in groups[g])
        # take the group when it brings the per-class counts closer to their targets
        new = deficit + sum(
            abs(target[k] - taken[k] - c) - abs(target[k] - taken[k]) for k, c in counts.items()
        )
        if new < deficit:
            taken.update(counts)
            val_idx.extend(groups[g])
            deficit = new
    if not val_idx:  # every group too large for the targets: take the smallest
        g = min(order, key=lambda k: len(groups[k]))
        val_idx = list(groups[g])
    chosen = set(val_idx)
    train = [it for i, it in enumerate(items) if i not in chosen]
    val = [it for i, it in enumerate(items) if i in chosen]
    if not train:
        raise ValueError("the validation split took every training item; lower val_fraction or add groups.")
    return train, val


def group_kfold(
    items: Sequence[Mapping[str, Any]], k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified k-fold cross-validation folds (sklearn's ``StratifiedGroupKFold``).

    A group (``item["group"]``, or the item itself when it has none) is always in one fold.

    Args:
        items: the items (each with ``id``, ``label`` and optionally ``group``).
        k: the number of folds (>= 2, at most the number of groups).
        seed: shuffling seed.

    Returns:
        ``k`` pairs ``(train_indices, heldout_indices)`` of int arrays into ``items``; the
        held-out parts partition ``range(len(items))``.

    Raises:
        ValueError: for ``k < 2`` or fewer groups than folds.
    """
    # scikit-learn only for group k-fold: a process that only predicts loads a datalist without it (lilaw_med.lean)
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"k must be at least 2 but is {k}.")
    group_keys = [_group_key(it) for it in items]
    n_groups = len(set(group_keys))
    if n_groups < k:
        raise ValueError(f"cannot make {k} grouped folds from {n_groups} group(s).")
    strat = [_strat_key(it.get("label")) for it in items]
    _, y = np.unique(np.asarray(strat, dtype=object).astype(str), return_inverse=True)
    _, g = np.unique(np.asarray(group_keys, dtype=object).astype(str), return_inverse=True)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    x = np.zeros((len(items), 1))
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)) for tr, te in splitter.split(x, y, g)
    ]


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


def _group_key(item: Mapping[str, Any]) -> str:
    group = item.get("group")
    return f"g:{group}" if group not in (None, "") else f"i:{item.get('id')}"


def _strat_key(label: Any) -> str:
    if isinstance(label, list):
        return "".join(str(int(v)) for v in label)
    return str(label)


def _read_raw(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Reads the file into raw split lists (unresolved) and top-level metadata."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path), {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}); expected a decathlon-style datalist or a .csv."
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e}); expected a .json or .csv datalist.") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object with 'training'/'validation'/'test' lists but got {type(data).__name__}."
        )
    raw: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        value = data.get(split, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ValueError(f"{path}: '{split}' must be a list of items but is {type(value).__name__}.")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValueError(
                    f"{path}: {split}[{i}] must be an object with 'image' and 'label' but is {item!r}."
                )
        raw[split] = value
    meta = {k: data.get(k) for k in ("class_names", "multi_label", "noise_sidecar")}
    return raw, meta


def _read_csv(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable CSV ({e}).") from e
    if "image" not in fields or "label" not in fields:
        raise ValueError(
            f"{path}: the CSV header must have 'image' and 'label' columns (plus optional split, group, id) but has {fields}."
        )
    raw: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        split_name = (row.pop("split", "") or "training").lower()
        split = _SPLIT_ALIASES.get(split_name)
        if split is None:
            raise ValueError(
                f"{path}: line {line}: split must be one of training/validation/test but is {split_name!r}."
            )
        label = row.get("label")
        if label == "":
            row["label"] = None
        elif isinstance(label, str) and ";" in label:
            row["label"] = [t.strip() for t in label.split(";") if t.strip()]
        if row.get("group") == "":
            row["group"] = None
        if row.get("id") == "":
            row.pop("id")
        raw[split].append(row)
    return raw


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
        index = int(float(value)) if isinstance(value, float) else int(value)
        if index < 0 or (names is not None and index >= len(names)):
            bound = f"[0, {len(names) - 1}]" if names is not None else ">= 0"
            raise ValueError(f"label {value!r} out of range: expected a class index in {bound}")
        return index
    if isinstance(value, str):
        raise ValueError(f"unknown class name {value!r}: expected one of {names}")
    raise ValueError(f"label must be a class index or name but is {value!r} ({type(value).__name__})")


def _to_multi_hot(value: Any, names: list[str] | None) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"multi-label items need a list label (0/1 flags or class names) but got {value!r}")
    if (
        value
        and all(_is_int_like(v) and int(v) in (0, 1) for v in value)
        and not any(isinstance(v, str) and names is not None and v in names for v in value)
    ):
        flags = [int(v) for v in value]
        if names is not None and len(flags) != len(names):
            raise ValueError(
                f"multi-label flags have length {len(flags)} but there are {len(names)} classes {names}"
            )
        return flags
    if names is None:
        raise ValueError(f"multi-label label {value!r} needs class_names to map names to flags")
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
    out: dict[str, Any] = {k: v for k, v in item.items() if k not in _RESERVED}
    image = item.get("image")
    rel: str = ""
    if isinstance(image, (list, tuple)) and image and all(isinstance(p, str) and p for p in image):
        resolved_list = [_resolve_path(p, base) for p in image]
        out["image"] = resolved_list
        rel = _relative_id(resolved_list[0], base)
    elif isinstance(image, str) and image.strip():
        resolved = _resolve_path(image.strip(), base)
        out["image"] = resolved
        rel = _relative_id(resolved, base)
    else:
        out["image"] = ""
        problems.append(
            Problem(
                str(item.get("id") or ""),
                "",
                split,
                f"{split}[{index}]: 'image' missing or empty (got {image!r})",
                "no_image",
            )
        )

    item_id = item.get("id")
    if item_id in (None, ""):
        item_id = rel
        if rel and "location" in item:
            loc = item["location"]
            loc_s = "_".join(str(int(v)) for v in loc) if isinstance(loc, (list, tuple)) else str(loc)
            item_id = f"{rel}@{loc_s}"
    out = {"id": str(item_id), **out}

    label = item.get("label")
    if label is None or label == "":
        out["label"] = None
        if split != "test":
            problems.append(Problem(out["id"], str(out["image"]), split, "label missing", "missing_label"))
    else:
        try:
            out["label"] = _to_multi_hot(label, names) if multi else _to_index(label, names)
        except ValueError as e:
            out["label"] = None
            problems.append(
                Problem(out["id"], str(out["image"]), split, f"field 'label': {e}", "bad_label")
            )
    group = item.get("group")
    out["group"] = None if group in (None, "") else str(group)
    return out


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
