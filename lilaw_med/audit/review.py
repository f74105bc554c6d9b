"""The review page: a reader decides on the audit's suspected labels, and the decisions flow back into
training.

:func:`write_review_page` orders the items to review (:func:`review_queue`), renders each through
the run's own loading transforms (:func:`display_images`) and writes one self-contained
``review.html`` (no server, no network request; a Content-Security-Policy lets only the page's own
script run). Its "Save decisions" CSV (:data:`lilaw_med.data.curation.DECISION_COLUMNS`) is what
``lilaw-med train --exclude`` and ``--relabel`` read; :func:`merge_decisions` combines several
readers' files and lists, never resolves, their disagreements. The page itself: docs/audit.md
(section 3, "Review").
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.resources
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from lilaw_med.audit.record import RunRecord
from lilaw_med.audit.report import AuditFiles, read_audit_rows
from lilaw_med.audit.window import ScoringWindow, window_pred_probs
from lilaw_med.data.curation import DECISION_COLUMNS, DECISIONS, read_id_csv
from lilaw_med.data.presets import get_preset
from lilaw_med.errors import InputError, one_line
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.transforms import evaluation_transforms
from lilaw_med.utils import atomic_write, guard_csv_text

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "REASONS",
    "MergeResult",
    "QueueEntry",
    "ReviewContext",
    "display_images",
    "embed_json",
    "merge_decisions",
    "render_review",
    "review_context",
    "review_queue",
    "run_key",
    "write_decisions",
    "write_review_page",
]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 512
DEFAULT_MAX_ITEMS = 1000
"""The page embeds every queued item's image (about 0.2 MB at 512 px): at a million items the audit
may flag far more than one page can hold or one reader decide, so the queue stops here by default."""
"""Longest side, in pixels, of an embedded image: large on a screen, about 100-250 kB per item."""
_SPLIT_ORDER = ("training", "validation", "test")
REASONS = ("flagged", "hard", "asked for")
"""Why an item is in the queue: the audit flagged it, the audit grades it hard, or the user asked."""
_ROW_COLUMNS = ("id", "split", "rank", "is_label_issue", "difficulty", "predicted_label", "p_given", "p_predicted",
                "label_score")
"""The columns of ``audit.csv`` the page reads (the queue's and each item's figures)."""


@dataclass(frozen=True)
class QueueEntry:
    """One item of the review queue.

    Attributes:
        id: the item's id.
        reason: one of :data:`REASONS`.
    """

    id: str
    reason: str


# ----------------------------------------------------------------------------- the queue
def review_queue(
    rows: Sequence[Mapping[str, Any]],
    items: Mapping[str, tuple[str, Mapping[str, Any]]],
    include: Sequence[str] = (),
    include_classes: Iterable[int] = (),
    include_splits: Iterable[str] = (),
    hard: bool = True,
) -> list[QueueEntry]:
    """The items a reader reviews, in order, each once.

    The order: the flagged items (``is_label_issue``) by rank, training before validation; then, with
    ``hard``, the other items whose difficulty is ``"hard"`` by rank; then the ids of ``include`` as
    given; then every item whose given label is in ``include_classes``, then every item of
    ``include_splits`` (both in the datalist's order). An item already queued keeps its first place.

    Args:
        rows: the audit's rows (``audit.csv``, :func:`lilaw_med.audit.report.read_audit_rows`: ``id``,
            ``split``, ``rank``, ``is_label_issue``, ``difficulty``).
        items: id -> (split, datalist item) of every item of the run (:attr:`RunRecord.items`).
        include: ids to add.
        include_classes: class indices whose items to add.
        include_splits: splits whose items to add (``"training"``, ``"validation"``, ``"test"``).
        hard: add the audit's hard items after the flagged ones.

    Returns:
        The :class:`QueueEntry` list.

    Raises:
        InputError: for an id of ``include`` the run does not hold, or an unknown split.
    """
    _check_includes(items, include, include_splits)
    queue: dict[str, str] = dict.fromkeys(_ranked_ids(rows, lambda r: bool(r["is_label_issue"])), "flagged")
    if hard:
        for i in _ranked_ids(rows, lambda r: r["difficulty"] == "hard"):
            queue.setdefault(i, "hard")
    for i in include:
        queue.setdefault(str(i), "asked for")
    for i in _ids_asked_for(items, {int(k) for k in include_classes}, set(include_splits)):
        queue.setdefault(i, "asked for")
    return [QueueEntry(i, reason) for i, reason in queue.items()]


def _ranked_ids(rows: Sequence[Mapping[str, Any]], keep: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    """The ids of the rows ``keep`` selects, training before validation before test, then by rank."""
    return [str(r["id"]) for r in sorted(filter(keep, rows), key=_split_rank)]


def _split_rank(r: Mapping[str, Any]) -> tuple[int, int]:
    """The queue's sort key of an audit row: training before validation before test, then rank."""
    split = str(r["split"])
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), int(r["rank"]))


def _check_includes(items: Mapping[str, Any], include: Sequence[str], include_splits: Iterable[str]) -> None:
    """Raises InputError for an id of ``include`` the run does not hold, or an unknown split."""
    unknown = [i for i in include if str(i) not in items]
    if unknown:
        raise InputError(f"--include: {len(unknown)} id(s) not in the run's datalist.json: "
                         + ", ".join(repr(u) for u in unknown[:5]))
    bad = sorted(set(include_splits) - set(_SPLIT_ORDER))
    if bad:
        raise InputError(f"--split: unknown split(s) {bad}; the splits are {list(_SPLIT_ORDER)}.")


def _ids_asked_for(
    items: Mapping[str, tuple[str, Mapping[str, Any]]], classes: set[int], splits: set[str]
) -> Iterator[str]:
    """The ids whose given label is in ``classes``, then those of ``splits``, in the datalist's order."""
    if classes:
        for i, (_, item) in items.items():
            label = item.get("label")
            if isinstance(label, (int, np.integer)) and int(label) in classes:
                yield i
    for split in (s for s in _SPLIT_ORDER if s in splits):
        yield from (i for i, (s, _) in items.items() if s == split)


# ----------------------------------------------------------------------------- images
def _to_uint8(a: np.ndarray) -> np.ndarray:
    """(C, W, H) float -> (H, W) or (H, W, 3) uint8: values the chain scaled to [0, 1] (a window, a
    percentile range, x/255) keep that scale; any other range is min-max scaled."""
    a = np.transpose(a, (0, 2, 1))  # MONAI's x-first (W, H) -> (H, W)
    a = a[:3] if a.shape[0] >= 3 else a[:1]
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
    if not (lo >= 0.0 and hi <= 1.0):
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    out = (np.clip(np.where(finite, a, 0.0), 0, 1) * 255).round().astype(np.uint8)
    return out[0] if out.shape[0] == 1 else np.transpose(out, (1, 2, 0))


def display_images(image: np.ndarray, spatial_dims: int) -> list[tuple[str, np.ndarray]]:
    """The views of a transformed image a reader looks at.

    Args:
        image: (C, W, H) for 2D or (C, W, H, D) for 3D, MONAI's axis order (x first), as the run's
            loading transforms give it (intensity window or scaling applied).
        spatial_dims: 2 or 3.

    Returns:
        ``[(title, uint8 (H, W) or (H, W, 3))]``: one view for 2D; for 3D the three orthogonal slices
        through the volume's centre (axial, coronal, sagittal), superior and anterior up.

    Raises:
        ValueError: when the shape does not match ``spatial_dims``.
    """
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != spatial_dims + 1:
        raise ValueError(f"expected a {spatial_dims}D image with a channel axis but got shape {a.shape}.")
    if spatial_dims == 2:
        return [("", _to_uint8(a))]
    _, w, h, d = a.shape
    views = [("axial", a[:, :, :, d // 2]), ("coronal", a[:, :, h // 2, :]), ("sagittal", a[:, w // 2, :, :])]
    return [(title, np.flipud(_to_uint8(v))) for title, v in views]


def _png_uri(display: np.ndarray, max_size: int) -> str:

    img = Image.fromarray(display)
    scale = max_size / max(img.size)
    if scale < 1:  # only down: a small image is enlarged by the browser, not by the file
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_loader(record: RunRecord) -> tuple[Callable[[Mapping[str, Any]], np.ndarray], int]:
    """``(item -> transformed image, spatial dims)``: the run's own loading chain (reader, DICOM VOI
    window, orientation, spacing, intensity window, slide tile) without the resize to the network's
    input, so a reader sees the image at its own resolution."""
    cfg = Config.from_mapping(record.config)
    chain = evaluation_transforms(cfg, spatial_size=None, multi_label=False)
    return (lambda item: np.asarray(chain({**item, "label": item.get("label", 0)})["image"])), get_preset(cfg.data.preset).spatial_dims


# ----------------------------------------------------------------------------- the page's data
def _finite(v: Any, digits: int = 4) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def _epoch_probs(record: RunRecord, split: str, ids: Sequence[str]) -> dict[str, list[list[float | None]]]:
    """id -> per recorded epoch the item's class probabilities (None where the epoch did not see it)."""
    dyn = record.dynamics[split]
    index = {i: j for j, i in enumerate(dyn.ids)}
    cols = [index[i] for i in ids if i in index]
    if not cols:
        return {}
    d = {k: np.asarray(v)[:, cols] for k, v in dyn.as_dict().items()}
    labels = record.labels([dyn.ids[j] for j in cols])
    n_classes = max(len(record.class_names), int(labels.max()) + 1, int(d["probs"].shape[-1]) if "probs" in d else 2)
    per_epoch = np.stack([window_pred_probs(d, labels, ScoringWindow(e, e + 1, "epoch", ""), n_classes)
                          for e in range(len(dyn.epochs))], axis=1)  # (N, E, C)
    return {dyn.ids[j]: [[_finite(p, 3) for p in epoch] if np.isfinite(epoch).all() else None for epoch in per_epoch[n]]
            for n, j in enumerate(cols)}


def _read_summary(audit_dir: Path) -> dict[str, Any]:
    """The ``summary`` of an audit's ``audit.json`` (its per-item rows are in ``audit.csv``)."""

    path = audit_dir / AuditFiles.JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `lilaw-med audit RUN_DIR` first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); run `lilaw-med audit RUN_DIR` again.") from None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict) or not isinstance(summary.get("splits"), dict):
        raise InputError(f"{path}: not an audit.json written by `lilaw-med audit` (no 'summary' with 'splits').")
    return summary


def run_key(record: RunRecord) -> str:
    """The key of a run's review progress in the browser: the run folder's name and the first 16 hex
    digits of its datalist's sha256 (a copy of the folder keeps it; another run's datalist does not)."""

    digest = hashlib.sha256(RunDir(record.root).datalist.read_bytes()).hexdigest()[:16]
    return f"{record.root.name}:{digest}"


@dataclass
class ReviewContext:
    """What the page shows (JSON-ready), built by :func:`review_context`.

    Attributes:
        data: run name and key, class names, per split the recorded epochs and the scoring window,
            and one dict per queued item (id, split, reason, given and predicted class, scores,
            difficulty, path, class probabilities per epoch, views).
        images: one ``data:`` URI per view, indexed by the items' ``views``.
    """

    data: dict[str, Any]
    images: list[str] = field(default_factory=list)


def review_context(
    record: RunRecord,
    summary: Mapping[str, Any],
    rows: Iterable[Mapping[str, Any]],
    queue: Sequence[QueueEntry],
    image_size: int = DEFAULT_IMAGE_SIZE,
    images: bool = True,
) -> ReviewContext:
    """The page's data for a queue.

    Args:
        record: the run folder.
        summary: the ``summary`` of the run's ``audit.json`` (each split's scoring ``window``).
        rows: the audit's per-item rows (:func:`lilaw_med.audit.report.read_audit_rows`).
        queue: the items to review (:func:`review_queue`).
        image_size: the longest side of an embedded image, in pixels.
        images: read the images (``False``: every item shows "no image").

    Returns:
        The :class:`ReviewContext`.
    """
    queued = {e.id for e in queue}
    by_id = {str(r["id"]): r for r in rows if str(r["id"]) in queued}
    splits = _split_windows(record, summary)
    probs: dict[str, Any] = {}
    for split in record.dynamics:
        probs.update(_epoch_probs(record, split, [e.id for e in queue if record.items[e.id][0] == split]))
    load, dims = _page_loader(record) if images else (None, 2)
    uris: list[str] = []
    out_items = []
    for entry in queue:
        split, item = record.items[entry.id]
        if load is None:
            views, error = [], "images switched off" if not images else "the run's transforms could not be built"
        else:
            views, error = _item_views(load, item, dims, image_size, uris)
        out_items.append({"id": entry.id, "split": split, "reason": entry.reason,
                          **_item_fields(item, by_id.get(entry.id, {})),
                          "probs": probs.get(entry.id), "views": views, "image_error": error})
    n_split = {s: sum(1 for _, (sp, _) in record.items.items() if sp == s) for s in splits}
    data = {
        "run_name": record.root.name, "run_key": run_key(record), "class_names": _class_names(record),
        "splits": splits, "split_sizes": n_split, "items": out_items,
    }
    return ReviewContext(data=data, images=uris)


def _item_fields(item: Mapping[str, Any], r: Mapping[str, Any]) -> dict[str, Any]:
    """An item's given label, the audit row ``r``'s figures (``{}``: not audited) and its image path."""
    given = item.get("label")
    return {
        "given": int(given) if isinstance(given, (int, np.integer)) else None,
        "predicted": r.get("predicted_label"), "p_given": _finite(r.get("p_given"), 3),
        "p_predicted": _finite(r.get("p_predicted"), 3), "score": _finite(r.get("label_score")),
        "rank": r.get("rank"), "flagged": bool(r.get("is_label_issue", False)), "difficulty": r.get("difficulty"),
        "path": str(item.get("image", "")),
    }


def _split_windows(record: RunRecord, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Each recorded split's epochs and the audit's scoring window (first and last epoch) over them."""
    splits: dict[str, Any] = {}
    for split, dyn in record.dynamics.items():
        w = summary.get("splits", {}).get(split, {}).get("window")
        splits[split] = {"epochs": [int(e) for e in dyn.epochs],
                         "window": None if w is None else [int(w["first_epoch"]), int(w["last_epoch"])]}
    return splits


def _page_loader(record: RunRecord) -> tuple[Callable[[Mapping[str, Any]], np.ndarray] | None, int]:
    """The run's image loader and spatial dims; ``(None, 2)`` when this version cannot read its config."""
    try:
        return _image_loader(record)
    except (KeyError, ValueError, TypeError) as e:  # a config this version cannot read: no images
        logger.warning("the review page shows no images: the run's config cannot build its loading "
                       "transforms (%s: %s).", type(e).__name__, e)
        return None, 2


def _item_views(
    load: Callable[[Mapping[str, Any]], np.ndarray], item: Mapping[str, Any], dims: int, image_size: int,
    uris: list[str],
) -> tuple[list[dict[str, Any]], str | None]:
    """An item's views (each naming its image in ``uris``, to which it appends) and its image error."""
    views: list[dict[str, Any]] = []
    try:
        for title, view in display_images(load(item), dims):
            views.append({"title": title, "image": len(uris)})
            uris.append(_png_uri(view, image_size))
    except Exception as e:  # noqa: BLE001 - one unreadable image must not stop the page
        return [], one_line(e, with_type=True)
    return views, None


def _class_names(record: RunRecord) -> list[str]:
    n = max([len(record.class_names)] + [int(it["label"]) + 1 for _, it in record.items.values()
                                          if isinstance(it.get("label"), (int, np.integer))])
    return [record.class_name(k) for k in range(n)]


# ----------------------------------------------------------------------------- the HTML
def embed_json(value: Any) -> str:
    """JSON text safe inside an HTML ``<script>`` element: ``<``, ``>``, ``&`` and the JavaScript line
    separators are written as ``\\uXXXX`` escapes, so no data can close the element (``</script>``)
    or open a comment; ``JSON.parse`` gives the same value back.

    Args:
        value: JSON-serialisable data (NaN and infinities are an error: write ``None``).

    Returns:
        The escaped JSON text.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_review(context: ReviewContext) -> str:
    """The self-contained review page.

    Args:
        context: what it shows (:func:`review_context`).

    Returns:
        The HTML text.
    """

    env = Environment(loader=PackageLoader("lilaw_med.audit", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    script = importlib.resources.files("lilaw_med.audit").joinpath("templates/review.js").read_text(encoding="utf-8")
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    for uri in context.images:  # what goes between the tags of an inert <script> element
        if not uri.startswith("data:image/png;base64,") or "<" in uri:
            raise ValueError("an embedded image must be a data:image/png;base64 URI.")
    return env.get_template("review.html").render(
        run_name=context.data["run_name"], n_items=len(context.data["items"]), data_json=embed_json(context.data),
        images=context.images, script=script, script_hash=script_hash,
    )


def write_review_page(
    run_dir: str | os.PathLike,
    audit_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    include: Sequence[str] = (),
    include_classes: Iterable[int | str] = (),
    include_splits: Iterable[str] = (),
    hard: bool = True,
    image_size: int = DEFAULT_IMAGE_SIZE,
    images: bool = True,
    max_items: int | None = DEFAULT_MAX_ITEMS,
) -> Path:
    """Writes the review page of an audited run.

    Args:
        run_dir: the run folder.
        audit_dir: its audit (default ``RUN_DIR/audit``).
        out: the page's path (default ``review.html`` in the audit folder).
        include: ids to add to the queue.
        include_classes: classes (names or indices) whose items to add.
        include_splits: splits whose items to add.
        hard: queue the audit's hard items after the flagged ones.
        image_size: the longest side of an embedded image, in pixels (at least 32).
        images: read the images.
        max_items: the longest queue (its head: the flagged items by rank first); ``None``: all.

    Returns:
        The page's path.

    Raises:
        FileNotFoundError: without a run folder, or when the audit's ``audit.json`` or ``audit.csv`` is missing.
        ValueError: on an unknown id, class or split, an image size below 32, or an ``audit.json`` or
            ``audit.csv`` that ``lilaw-med audit`` did not write (the message names the file).

    Example::

        page = write_review_page("runs/first", include_classes=["pneumonia"])  # runs/first/audit/review.html
    """

    if image_size < 32:
        raise InputError(f"image_size must be at least 32 pixels but is {image_size}.")
    if max_items is not None and max_items < 1:
        raise InputError(f"max_items must be at least 1 but is {max_items}.")
    record = RunRecord.read(run_dir)
    folder = Path(audit_dir) if audit_dir is not None else record.root / RunDir.AUDIT
    summary = _read_summary(folder)
    rows = read_audit_rows(folder, _ROW_COLUMNS)
    names = _class_names(record)
    classes = [_class_index(c, names) for c in include_classes]
    queue = review_queue(rows, record.items, include, classes, include_splits, hard)
    if max_items is not None and len(queue) > max_items:
        logger.warning("the review queue holds %d items; the page shows the first %d (the flagged ones by rank "
                       "first): raise --max-items, or review a class or split at a time.", len(queue), max_items)
        queue = queue[:max_items]
    if not queue:
        logger.warning("the review queue is empty: the audit flags no item and grades none hard; "
                       "add items with --include, --include-class or --split.")
    page = render_review(review_context(record, summary, rows, queue, image_size, images))
    path = atomic_write(Path(out) if out is not None else folder / AuditFiles.REVIEW, page)
    logger.info("review page of %s: %d items queued; written to %s", record.root, len(queue), path)
    return path


def _class_index(value: int | str, names: Sequence[str]) -> int:
    s = str(value).strip()
    if s in names:
        return list(names).index(s)
    if s.lstrip("-").isdigit() and 0 <= int(s) < len(names):
        return int(s)
    raise InputError(f"--include-class: unknown class {value!r}; the classes are {list(names)} (or their indices).")


# ----------------------------------------------------------------------------- several readers
@dataclass
class MergeResult:
    """What :func:`merge_decisions` found.

    Attributes:
        rows: one decision row per id on which the readers agree (:data:`DECISION_COLUMNS`).
        disagreements: one row per reader's decision on each id on which they disagree.
        n_disagreed: how many ids the readers disagree on.
    """

    rows: list[dict[str, str]]
    disagreements: list[dict[str, str]]
    n_disagreed: int


def merge_decisions(paths: Sequence[str | os.PathLike]) -> MergeResult:
    """Combines the decision files of several readers.

    An id on which every reader who decided it (``skip`` is no decision) made the same decision with
    the same ``new_label`` gets one row: that decision, the readers joined by ``;``, the notes as
    ``reader: note`` joined by `` | ``, the latest time. An id no reader decided keeps a ``skip`` row
    with the notes. An id the readers decided differently gets no row: each reader's row goes to
    ``disagreements`` (with the file it came from), for the readers to settle.

    Args:
        paths: two or more decision files (the page's "Save decisions").

    Returns:
        The :class:`MergeResult`.

    Raises:
        FileNotFoundError: when a file is missing.
        InputError: for fewer than two files, a file without a ``decision`` column, an unknown
            decision, or an id a file lists twice with different decisions.

    Example::

        merged = merge_decisions(["anna.csv", "ben.csv"])
        write_decisions("agreed.csv", merged.rows)
    """
    if len(paths) < 2:
        raise InputError(f"--merge needs two or more decision files but got {len(paths)}.")
    by_id: dict[str, list[dict[str, str]]] = {}
    for path in paths:
        for i, r in _read_decision_file(path).items():
            by_id.setdefault(i, []).append(r)
    merged, disagreements, n_disagreed = [], [], 0
    for i, rs in by_id.items():
        row = _agreed_row(i, rs)
        if row is None:
            n_disagreed += 1
            disagreements.extend(rs)
        else:
            merged.append(row)
    return MergeResult(rows=merged, disagreements=disagreements, n_disagreed=n_disagreed)


def _read_decision_file(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """One reader's decisions: id -> row (:data:`DECISION_COLUMNS` and ``file``); raises InputError
    for a file without a ``decision`` column, an unknown decision, or an id listed twice differently."""
    rows = read_id_csv(path)
    if rows and "decision" not in rows[0]:
        raise InputError(f"{path}: not a decision file (no 'decision' column; found {sorted(rows[0])}).")
    seen: dict[str, dict[str, str]] = {}
    for line, r in enumerate(rows, start=2):
        if r["decision"] not in DECISIONS:
            raise InputError(f"{path}, line {line}: decision {r['decision']!r} is not one of {list(DECISIONS)}.")
        r = {c: r.get(c, "") for c in DECISION_COLUMNS}
        r["reviewer"] = r["reviewer"] or Path(path).stem
        if r["id"] in seen and (seen[r["id"]]["decision"], seen[r["id"]]["new_label"]) != (r["decision"], r["new_label"]):
            raise InputError(f"{path}: id {r['id']!r} is listed twice with different decisions.")
        seen[r["id"]] = {**r, "file": str(path)}
    return seen


def _agreed_row(i: str, rs: Sequence[dict[str, str]]) -> dict[str, str] | None:
    """The merged row of id ``i`` from the readers' rows ``rs``; ``None`` when they disagree."""
    decided = [r for r in rs if r["decision"] != "skip"]
    verdicts = {(r["decision"], r["new_label"] if r["decision"] == "relabel" else "") for r in decided}
    if len(verdicts) > 1:
        return None
    decision, label = next(iter(verdicts)) if verdicts else ("skip", "")
    voters = decided or rs
    return {
        "id": i, "decision": decision, "new_label": label,
        "note": " | ".join(f"{r['reviewer']}: {r['note']}" for r in rs if r["note"]),
        "reviewer": ";".join(dict.fromkeys(r["reviewer"] for r in voters)),
        "time": max((r["time"] for r in voters), default=""),
    }


def write_decisions(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                    columns: Sequence[str] = DECISION_COLUMNS) -> Path:
    """Writes decision rows as CSV (text cells guarded against spreadsheet formulas), atomically.

    Args:
        path: the file.
        rows: dicts with (at least) ``columns``.
        columns: the header.

    Returns:
        The path written.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: guard_csv_text(str(r.get(c, "") or "")) for c in columns})
    return atomic_write(path, buf.getvalue())
