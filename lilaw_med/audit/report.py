"""The audit of a run folder and the files it writes (``lilaw-med audit`` runs it through
:func:`lilaw_med.workflows.audit.run_audit`).

:func:`write_audit` audits each recorded split of a run read once
(:func:`lilaw_med.audit.core.audit_split`) and writes the files of :class:`AuditFiles`;
:func:`read_audit_rows` reads ``audit.csv`` back, typed. What each file holds: docs/audit.md
(section 3). No identifying DICOM tag is written unless ``include_identifying``, and text cells a
spreadsheet would run as a formula are neutralised (OWASP's CSV-injection rule).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.audit.core import (
    AuditOptions,
    RunRecord,
    SplitAudit,
    audit_split,
    level_counts,
    review_budget,
    scoring_window,
)
from lilaw_med.audit.detection import detection_curves, detection_quality
from lilaw_med.audit.difficulty import DIFFICULTY_LEVELS
from lilaw_med.audit.html import render_html
from lilaw_med.audit.rank import self_confidence
from lilaw_med.audit.window import choose_window, window_pred_probs
from lilaw_med.errors import InputError
from lilaw_med.run.run_dir import RunDir, to_jsonable
from lilaw_med.utils import FORMULA_START, atomic_write, atomic_writer, guard_csv_text, unguard_csv_text

__all__ = ["COLUMNS", "AuditFiles", "AuditResult", "FinalModelProbabilities", "csv_text", "dicom_uids", "read_audit_rows", "write_audit"]

logger = logging.getLogger(__name__)

COLUMNS = (
    "id", "split", "path", "given_label", "given_class", "predicted_label", "predicted_class", "label_score",
    "rank", "is_label_issue", "difficulty", "p_given", "p_predicted", "oof_p_given", "mean_w_alpha",
    "mean_w_beta", "mean_w_delta", "mean_weight", "epochs_seen", "study_instance_uid", "series_instance_uid",
    "sop_instance_uid",
)
"""Columns of ``audit.csv`` (then ``patient_id`` with ``include_identifying``, ``true_label`` and
``true_class`` when the truth is known). ``p_given`` / ``p_predicted``: the probability of the given /
predicted class over the scoring window; ``predicted_class``: the most probable class of the
probabilities the score reads (the window's, averaged with the out-of-fold ones under ``--folds``);
``oof_p_given``: the out-of-fold probability of the given class (``--folds``)."""
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""The readers' NIfTI, numpy and PIL suffixes (``lilaw_med.data.readers``; a test keeps them equal): an
item named so is no DICOM file and its UIDs are empty without opening it, or importing the readers'
MONAI, which would take seconds of an audit that reads no image."""
CSV_CHUNK = 50_000
"""Items formatted at a time when ``audit.csv`` is written (memory stays flat in the number of items)."""
_FLOAT_COLUMNS = {"label_score", "p_given", "p_predicted", "oof_p_given", "mean_w_alpha", "mean_w_beta",
                  "mean_w_delta", "mean_weight"}
_INT_COLUMNS = {"given_label", "predicted_label", "rank", "epochs_seen", "true_label"}
_BOOL_COLUMNS = {"is_label_issue"}
EXCLUDE_COLUMNS = ("id", "split", "path", "given_label", "given_class", "predicted_label", "predicted_class",
                   "label_score", "rank", "reason")


@dataclass(frozen=True)
class AuditFiles:
    """The audit folder's file names: the one place that knows them."""

    CSV = "audit.csv"
    JSON = "audit.json"
    EXCLUDE = "exclude.csv"
    DETECTION = "detection.json"
    HTML = "report.html"
    REVIEW = "review.html"
    """Written by ``lilaw-med review`` (:mod:`lilaw_med.audit.review`), linked from the report."""


@dataclass
class AuditResult:
    """What :func:`run_audit` produced.

    Attributes:
        out_dir: the audit folder.
        record: the run folder as read.
        options: the options used.
        splits: split -> :class:`SplitAudit`.
        summary: ``audit.json``.
        detection: detection figures when the truth is known, else ``None``.
        files: name -> path of every file written.
    """

    out_dir: Path
    record: RunRecord
    options: AuditOptions
    splits: dict[str, SplitAudit]
    summary: dict[str, Any]
    detection: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per item (the columns of ``audit.csv``), built when asked: for small runs and
        tests; the writers never build them all."""
        return [row for a in self.splits.values()
                for row in self.item_rows(a, np.arange(len(a.ids)))]

    def item_rows(self, audit: SplitAudit, idx: np.ndarray) -> list[dict[str, Any]]:
        """The ``audit.csv`` rows of the items ``idx`` (positions in ``audit.ids``) of one split."""
        return item_rows(self.record, audit, idx, self.options.include_identifying)


# ----------------------------------------------------------------------------- the audit
FinalModelProbabilities = Callable[[list[Mapping[str, Any]]], np.ndarray]
"""items -> (N, K) class probabilities of the run's final model (one evaluation pass)."""


def write_audit(
    record: RunRecord,
    options: AuditOptions,
    out_dir: str | os.PathLike | None = None,
    oof_probs: np.ndarray | None = None,
    final_model_probs: FinalModelProbabilities | None = None,
) -> AuditResult:
    """Audits a run folder already read and writes the audit files.

    The parts that run a network (out-of-fold probabilities, the final model's self-confidence)
    come in as arguments: :func:`lilaw_med.workflows.audit.run_audit` computes them, so the audit
    itself never imports the training engine.

    Args:
        record: the run folder as read (:meth:`RunRecord.read`).
        options: the :class:`AuditOptions`.
        out_dir: where to write (default ``RUN_DIR/audit``).
        oof_probs: (N, K) out-of-fold probabilities aligned with the training dynamics' ids, or ``None``.
        final_model_probs: the final model's probabilities for the detection baseline
            (``options.final_model_baseline`` with known truth), or ``None`` to skip it.

    Returns:
        The :class:`AuditResult`.

    Raises:
        InputError: on invalid options, a multi-label run, or dynamics of another datalist.

    Example::

        record = RunRecord.read("runs/first", ("training",))
        result = write_audit(record, AuditOptions(review=200, thumbnails=False))
    """
    opts = options
    out = Path(out_dir) if out_dir is not None else record.root / RunDir.AUDIT
    window = scoring_window(record, opts.window, opts)
    splits = {s: audit_split(record, s, opts, window=window, oof_probs=oof_probs if s == "training" else None)
              for s in opts.splits if s in record.dynamics}
    summary = _summary(record, opts, splits)
    detection = None
    if record.truth is not None:
        detection = _detection(record, splits["training"], opts, final_model_probs)
        summary["detection"] = {k: v for k, v in detection.items() if k != "curves"}

    files: dict[str, Path] = {}
    files[AuditFiles.CSV] = _write_items_csv(out / AuditFiles.CSV, record, splits, opts.include_identifying)
    files[AuditFiles.JSON] = atomic_write(out / AuditFiles.JSON, json.dumps(to_jsonable({"summary": summary}), indent=1))
    flagged = _flagged_rows(record, splits, opts.include_identifying)
    reason = f"label issue ({opts.method}, {window.rule} window, {_FLAG_REASON[splits['training'].flag_rule]})"
    files[AuditFiles.EXCLUDE] = atomic_write(
        out / AuditFiles.EXCLUDE, csv_text([{**r, "reason": reason} for r in flagged], EXCLUDE_COLUMNS))
    if detection is not None:
        files[AuditFiles.DETECTION] = atomic_write(
            out / AuditFiles.DETECTION, json.dumps(to_jsonable({k: v for k, v in detection.items() if k != "curves"}), indent=1))
    result = AuditResult(out_dir=out, record=record, options=opts, splits=splits, summary=summary,
                         detection=detection, files=files)
    files[AuditFiles.HTML] = atomic_write(out / AuditFiles.HTML, render_html(result))
    logger.info("audit of %s: %d items, %d flagged; written to %s", record.root,
                sum(len(a.ids) for a in splits.values()), len(flagged), out)
    return result


def _flagged_rows(record: RunRecord, splits: Mapping[str, SplitAudit], include_identifying: bool) -> list[dict[str, Any]]:
    """The rows of the flagged items (``exclude.csv``): training first, each split by rank."""
    return [row for a in sorted(splits.values(), key=lambda a: a.split != "training")
            for row in item_rows(record, a, np.nonzero(a.is_label_issue)[0][np.argsort(a.rank[a.is_label_issue])],
                                 include_identifying)]


_INTERVAL_NOTE = (
    "the envelope of the count bootstrap's intervals over the candidate count windows (window_estimates); where the "
    "rate is not identifiable, from 0 to the larger of that and the share of items the network disagrees with")
_PRECISION_NOTE = (
    "mean over the flagged items of each item's chance of a wrong label by the count window's confident joint: 1 when "
    "confidently another class, 0 when confidently the given one, the class's estimated rate when unsure")
_FLAG_REASON = {"estimate": "confident-joint count", "noise_rate": "fixed share per class", "review": "review budget"}


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def item_columns(record: RunRecord, a: SplitAudit, idx: np.ndarray, include_identifying: bool) -> dict[str, list[Any]]:
    """The ``audit.csv`` columns of the items ``idx`` of a split, as lists of plain values (``None``
    for a missing number).

    Args:
        record: the run folder.
        a: the split's audit.
        idx: int (n,) positions in the split.
        include_identifying: add ``patient_id``.

    Returns:
        column -> list (n); the order is :data:`COLUMNS`, then ``patient_id``, ``true_label``, ``true_class``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    labels = a.labels[idx]
    wp = a.window_probs[idx]
    seen = np.isfinite(wp).all(axis=1)
    pred = a.predicted[idx]
    ids = [a.ids[j] for j in idx.tolist()]
    paths = [str(record.items[i][1].get("image", "")) for i in ids]
    names = np.array([record.class_name(k) for k in range(a.num_classes)] + [""], dtype=object)  # -1: ""

    def num(v: np.ndarray) -> list[float | None]:
        return [x if math.isfinite(x) else None for x in np.asarray(v, dtype=np.float64).tolist()]

    p_given = np.where(seen, np.nan_to_num(wp, nan=0.0)[np.arange(idx.size), labels], np.nan)
    p_pred = np.where(seen, np.nan_to_num(wp, nan=-1.0).max(axis=1, initial=-1.0), np.nan)
    oof = np.full(idx.size, np.nan) if a.oof_probs is None else \
        np.nan_to_num(a.oof_probs[idx], nan=0.0)[np.arange(idx.size), labels]
    seen_epochs = a.epochs_seen[idx] if a.epochs_seen is not None else np.zeros(idx.size, np.int64)
    cols: dict[str, list[Any]] = {
        "id": ids, "split": [a.split] * idx.size, "path": paths,
        "given_label": labels.tolist(), "given_class": names[labels].tolist(),
        "predicted_label": pred.tolist(), "predicted_class": names[pred].tolist(),
        "label_score": num(a.scores[idx]), "rank": a.rank[idx].tolist(), "is_label_issue": a.is_label_issue[idx].tolist(),
        "difficulty": a.levels[idx].tolist(), "p_given": num(p_given), "p_predicted": num(p_pred),
        "oof_p_given": num(oof),
        **{f"mean_{k}": num(a.terms[k][idx]) for k in ("w_alpha", "w_beta", "w_delta", "weight")},
        "epochs_seen": seen_epochs.tolist(),
    }
    cols.update(_dicom_columns(paths, include_identifying))
    if record.truth is not None:
        true = [int(record.truth.get(a.ids[j], int(a.labels[j]))) for j in idx.tolist()]  # noise left the rest alone
        cols["true_label"], cols["true_class"] = true, [record.class_name(t) for t in true]
    return cols


def _dicom_columns(paths: Sequence[str], include_identifying: bool) -> dict[str, list[str]]:
    """The DICOM UID columns (and ``patient_id``) of the items at ``paths``; empty cells for other files."""
    keys = ("study_instance_uid", "series_instance_uid", "sop_instance_uid") + (("patient_id",) if include_identifying else ())
    cols: dict[str, list[str]] = {key: [""] * len(paths) for key in keys}
    for k, path in enumerate(paths):
        if not path.lower().endswith(NOT_DICOM_SUFFIXES):  # named as another format: no file is opened
            for key, value in dicom_uids(path, include_identifying).items():
                cols[key][k] = value
    return cols


def item_rows(record: RunRecord, a: SplitAudit, idx: np.ndarray, include_identifying: bool) -> list[dict[str, Any]]:
    """The ``audit.csv`` rows of the items ``idx`` of a split, one dict each (see :func:`item_columns`)."""
    cols = item_columns(record, a, idx, include_identifying)
    keys = list(cols)
    return [dict(zip(keys, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _format_column(name: str, values: list[Any]) -> list[Any]:
    """A column's CSV cells, formatted as :func:`_cell` formats one value, a whole column at a time."""
    if name in _FLOAT_COLUMNS:
        return ["" if v is None else f"{v:.6g}" for v in values]
    if values and isinstance(values[0], (bool, int)):
        return values
    if all(isinstance(v, str) for v in values):  # text: guard_csv_text, without a call per cell
        return ["'" + v if v.startswith(FORMULA_START) else v for v in values]
    return [_cell(v) for v in values]


def _write_items_csv(path: Path, record: RunRecord, splits: Mapping[str, SplitAudit], include_identifying: bool) -> Path:
    """Writes ``audit.csv`` chunk by chunk into a temporary file beside ``path``, then renames it (atomic)."""

    with atomic_writer(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        header: list[str] | None = None
        for a in splits.values():
            for lo in range(0, len(a.ids), CSV_CHUNK):
                cols = item_columns(record, a, np.arange(lo, min(lo + CSV_CHUNK, len(a.ids))), include_identifying)
                if header is None:
                    header = [*COLUMNS, *(k for k in cols if k not in COLUMNS)]
                    writer.writerow(header)
                writer.writerows(zip(*(_format_column(k, cols[k]) if k in cols else [""] * len(cols["id"])
                                       for k in header), strict=True))
    return path


def read_audit_rows(audit_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of an audit's ``audit.csv``, typed back as :func:`item_columns` gives them.

    Integer columns (``given_label``, ``predicted_label``, ``rank``, ``epochs_seen``, ``true_label``)
    come back as ``int``, ``is_label_issue`` as ``bool``, the probability and score columns as ``float``
    (written with 6 significant digits), an empty number cell as ``None``, and text with the formula
    guard removed (:func:`lilaw_med.utils.unguard_csv_text`), so ids match the run's datalist.

    Args:
        audit_dir: the audit folder (``RUN_DIR/audit``, or where ``lilaw-med audit -o`` wrote it).
        columns: the columns to keep (default: all); memory grows with the columns kept.

    Returns:
        One dict per item, in the file's order.

    Raises:
        FileNotFoundError: when the folder has no ``audit.csv``.
        InputError: when the file has no header, lacks a column of :data:`COLUMNS` or of ``columns``,
            a row has another number of cells than the header, or a cell is not of its column's type.
    """
    path = Path(audit_dir) / AuditFiles.CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `lilaw-med audit RUN_DIR` to write the audit's per-item rows.")
    keep, picked = _read_cells(path, columns)
    cols = list(zip(*picked, strict=True)) if picked else [() for _ in keep]
    typed = [_parse_column(path, name, cells) for name, cells in zip(keep, cols, strict=True)]
    return [dict(zip(keep, values, strict=True)) for values in zip(*typed, strict=True)]


def _read_cells(path: Path, columns: Sequence[str] | None) -> tuple[list[str], list[list[str]]]:
    """The columns kept (``columns``, default all) and each row's cells of them, the header checked."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        keep = _check_header(path, header, columns)
        pos = [header.index(c) for c in keep]
        picked: list[list[str]] = []
        for cells in reader:
            if len(cells) != len(header):
                raise InputError(f"{path}, line {reader.line_num}: {len(cells)} cells but the header has {len(header)}.")
            picked.append([cells[i] for i in pos])
    return keep, picked


def _check_header(path: Path, header: list[str] | None, columns: Sequence[str] | None) -> list[str]:
    """The columns to keep, once ``header`` is an ``audit.csv``'s and holds each of ``columns``."""
    if header is None:
        raise InputError(f"{path}: empty; not an audit.csv written by `lilaw-med audit`.")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: not an audit.csv written by `lilaw-med audit` (no column(s) {missing}).")
    keep = list(header) if columns is None else list(columns)
    unknown = [c for c in keep if c not in header]
    if unknown:
        raise InputError(f"{path}: no column(s) {unknown}; the file has {header}.")
    return keep


def _parse_column(path: Path, name: str, cells: Sequence[str]) -> list[Any]:
    """The values of one ``audit.csv`` column's cells (the inverse of :func:`_format_column`)."""
    bools = {"True": True, "False": False}
    try:
        if name in _FLOAT_COLUMNS:
            return [None if c == "" else float(c) for c in cells]
        if name in _INT_COLUMNS:
            return [None if c == "" else int(c) for c in cells]
        if name in _BOOL_COLUMNS:
            return [bools[c] for c in cells]
    except (KeyError, ValueError):
        kind = "a number" if name in _FLOAT_COLUMNS else "an integer" if name in _INT_COLUMNS else "True or False"
        row, cell = next((k, c) for k, c in enumerate(cells) if not _parses(name, c))
        raise InputError(f"{path}, item row {row + 1}: column {name!r} is {cell!r}, not {kind}.") from None
    return [unguard_csv_text(c) for c in cells]


def _parses(name: str, cell: str) -> bool:
    """Whether one cell of a typed ``audit.csv`` column reads (the error of :func:`_parse_column` names it)."""
    if name in _BOOL_COLUMNS:
        return cell in ("True", "False")
    try:
        (float if name in _FLOAT_COLUMNS else int)(cell or "0")
    except ValueError:
        return False
    return True


def _summary(record: RunRecord, opts: AuditOptions, splits: Mapping[str, SplitAudit]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_dir": str(record.root), "options": asdict(opts), "class_names": record.class_names, "splits": {},
        "lilaw_by_epoch": record.dynamics["training"].lilaw,
    }
    for split, a in splits.items():
        noise = a.noise
        counts = np.bincount(a.labels, minlength=a.num_classes)
        out["splits"][split] = {
            "n_items": len(a.ids), "n_label_issues": int(a.is_label_issue.sum()),
            "window": {"first_epoch": a.window.start + 1, "last_epoch": a.window.stop, "rule": a.window.rule,
                       "reason": a.window.reason, "n_epochs_recorded": len(record.dynamics[split].epochs)},
            "count_window": None if a.count_window is None else {
                "first_epoch": a.count_window.start + 1, "last_epoch": a.count_window.stop, "rule": a.count_window.rule,
                "reason": a.count_window.reason},
            "estimated_noise_rate": _f(noise.overall),
            "estimated_noise_rate_interval": [_f(v) for v in noise.overall_interval],
            "estimated_noise_rate_sampling_interval": [_f(v) for v in noise.sampling_interval or noise.overall_interval],
            "interval_confidence": noise.confidence,
            "interval_note": _INTERVAL_NOTE,
            "identifiable": a.identifiable,
            "not_identifiable_because": list(a.not_identifiable),
            "window_estimates": [
                {"first_epoch": w.start + 1, "last_epoch": w.stop, "rule": w.rule, "estimated_noise_rate": _f(e.overall),
                 "sampling_interval": [_f(v) for v in e.overall_interval]} for w, e in a.window_estimates],
            "flag_rule": a.flag_rule,
            "review_budget": None if opts.review is None else review_budget(opts.review, len(a.ids)),
            "expected_precision": _f(a.expected_precision),
            "expected_precision_note": _PRECISION_NOTE,
            "difficulty": level_counts(a),
            "per_class": [
                {"class": record.class_name(k), "n_items": int(counts[k]),
                 "estimated_noise_rate": _f(noise.per_class[k]),
                 "estimated_noise_rate_interval": [_f(v) for v in noise.per_class_interval[k]],
                 "estimated_n_wrong": int(noise.n_wrong[k]),
                 "n_label_issues": int(a.is_label_issue[a.labels == k].sum()), "threshold": _f(a.thresholds[k]),
                 "difficulty": level_counts(a, k)}
                for k in range(a.num_classes)
            ],
            "warnings": list(a.warnings),
        }
    return out


# ----------------------------------------------------------------------------- detection (truth known)
def _detection(
    record: RunRecord, a: SplitAudit, opts: AuditOptions, final_model_probs: FinalModelProbabilities | None
) -> dict[str, Any]:
    true = np.array([int(record.truth.get(i, a.labels[j])) for j, i in enumerate(a.ids)])  # type: ignore[union-attr]
    wrong = true != a.labels
    dyn = record.dynamics["training"].views()
    last = choose_window(len(record.dynamics["training"].epochs), "last")
    scores = {"label_score": a.scores,
              "final_epoch_self_confidence": self_confidence(
                  a.labels, np.nan_to_num(window_pred_probs(dyn, a.labels, last, a.num_classes), nan=0.0))}
    note = ("label_score: the audit's score; final_epoch_self_confidence: p[given] recorded during the last training "
            "epoch (no extra pass)")
    if opts.final_model_baseline and final_model_probs is not None:
        sc = _final_model_self_confidence(record, a, final_model_probs)
        if sc is not None:
            scores["final_model_self_confidence"] = sc
            note += "; final_model_self_confidence: p[given] of checkpoints/final_model.pt in eval mode"
    out: dict[str, Any] = {"n_items": int(wrong.size), "n_mislabeled": int(wrong.sum()),
                           "true_noise_rate": _f(wrong.mean()), "note": note + ".", "scores": {}, "curves": {}}
    for name, s in scores.items():
        out["scores"][name] = {k: _f(v) for k, v in detection_quality(s, wrong).items()}
        if 0 < wrong.sum() < wrong.size:
            out["curves"][name] = detection_curves(s, wrong)
    out["is_label_issue"] = _flag_quality(a.is_label_issue, wrong)
    out["noise_rate"] = [
        {"class": record.class_name(k), "true": _share(wrong, a.labels == k),
         "estimated": _f(a.noise.per_class[k]), "interval": [_f(v) for v in a.noise.per_class_interval[k]]}
        for k in range(a.num_classes)
    ]
    out["difficulty"] = {lv: {"n_items": int((a.levels == lv).sum()), "true_mislabel_rate": _share(wrong, a.levels == lv)}
                         for lv in DIFFICULTY_LEVELS}
    return out


def _share(wrong: np.ndarray, where: np.ndarray) -> float | None:
    """The share of wrong labels among the items ``where`` selects (``None`` for none)."""
    return _f(wrong[where].mean()) if where.any() else None


def _flag_quality(flags: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of the flagged items against the true wrong labels, and the count's error."""
    tp = int((flags & wrong).sum())
    precision = tp / flags.sum() if flags.any() else math.nan
    recall = tp / wrong.sum() if wrong.any() else math.nan
    return {
        "n_flagged": int(flags.sum()), "precision": _f(precision), "recall": _f(recall),
        "f1": _f(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0,
        "count_error": _f(abs(int(flags.sum()) - int(wrong.sum())) / max(wrong.size, 1)),
    }


def _final_model_self_confidence(
    record: RunRecord, a: SplitAudit, final_model_probs: FinalModelProbabilities
) -> np.ndarray | None:
    """p[given] of the run's final model on the split's items (one eval pass), or None when impossible."""
    try:
        probs = final_model_probs([record.items[i][1] for i in a.ids])
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        logger.warning("final-model self-confidence baseline skipped (%s: %s).", type(e).__name__, e)
        return None
    return probs[np.arange(len(a.ids)), a.labels]


# ----------------------------------------------------------------------------- identifiers
def dicom_uids(path: str, include_identifying: bool = False) -> dict[str, str]:
    """Study/Series/SOP Instance UIDs of a DICOM file or series folder (pixels are not read).

    Args:
        path: the item's image path.
        include_identifying: also return ``patient_id`` (off by default: no identifying tag).

    Returns:
        ``{"study_instance_uid", "series_instance_uid", "sop_instance_uid"[, "patient_id"]}``; empty
        strings for a non-DICOM item. For a series folder the SOP Instance UID is left empty (one
        per slice).
    """

    out = {"study_instance_uid": "", "series_instance_uid": "", "sop_instance_uid": ""}
    if include_identifying:
        out["patient_id"] = ""
    if path.lower().endswith(NOT_DICOM_SUFFIXES):  # named as another format: no file access
        return out
    # MONAI's readers and pydicom (seconds) load only for a DICOM item (see NOT_DICOM_SUFFIXES)
    from lilaw_med.data.readers import is_dicom_file, list_series_files

    p = Path(path)
    files = [str(p)] if is_dicom_file(p) else (list_series_files(p) if p.is_dir() else [])
    if not files:
        return out
    # pydicom loads only for a DICOM item, as above
    import pydicom

    tags = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"] + (["PatientID"] if include_identifying else [])
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=tags, force=True)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as e:  # a broken header must not stop the audit
        logger.warning("could not read DICOM UIDs of %s: %s", path, e)
        return out
    out["study_instance_uid"] = str(getattr(ds, "StudyInstanceUID", "") or "")
    out["series_instance_uid"] = str(getattr(ds, "SeriesInstanceUID", "") or "")
    if p.is_file():
        out["sop_instance_uid"] = str(getattr(ds, "SOPInstanceUID", "") or "")
    if include_identifying:
        out["patient_id"] = str(getattr(ds, "PatientID", "") or "")
    return out


# ----------------------------------------------------------------------------- writers
def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool) or isinstance(v, (int, np.integer)):
        return v
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return guard_csv_text(s)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The CSV text of ``rows`` (formula-guarded cells; ``columns`` default: :data:`COLUMNS`, then any other key)."""
    if columns is None:
        columns = list(COLUMNS)
        for r in rows:
            columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in columns})
    return buf.getvalue()
