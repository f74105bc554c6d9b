"""``lilaw-med audit``: the audit of a run folder and the files it writes.

:func:`run_audit` reads the run once (:class:`lilaw_med.audit.core.RunRecord`), optionally
cross-fits (:mod:`lilaw_med.audit.crossfit`), audits each recorded split
(:func:`lilaw_med.audit.core.audit_split`) and writes into ``RUN_DIR/audit/`` (or ``out_dir``)
the files named in :class:`AuditFiles`:

* ``audit.csv`` / ``audit.json``: one row per item (cleanlab's column names where the meaning is
  the same; see :data:`COLUMNS`), the JSON with the summary (window, per-class noise estimates
  with intervals, thresholds, difficulty counts);
* ``exclude.csv``: the flagged items, accepted by ``lilaw-med train --exclude``;
* ``detection.json``: detection figures when the datalist's noise sidecar gives the truth;
* ``report.html``: the self-contained report (:mod:`lilaw_med.audit.html`), which links to
  ``review.html``, the page where a reader decides on the flagged items (``lilaw-med review``,
  :mod:`lilaw_med.audit.review`).

DICOM UIDs are read with pydicom (``stop_before_pixels``) so a reader can open the case in a
PACS; no patient name, id or other identifying tag is written unless ``include_identifying``.
Text cells that a spreadsheet would run as a formula are neutralised (OWASP's CSV-injection rule).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
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
    scoring_window,
)
from lilaw_med.audit.detection import detection_curves, detection_quality
from lilaw_med.audit.difficulty import DIFFICULTY_LEVELS
from lilaw_med.audit.rank import self_confidence
from lilaw_med.audit.window import choose_window, window_pred_probs
from lilaw_med.training.run_dir import RunDir, to_jsonable
from lilaw_med.utils import atomic_write, guard_csv_text

__all__ = ["COLUMNS", "AuditFiles", "AuditResult", "dicom_uids", "run_audit"]

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
        rows: one dict per item (the columns of ``audit.csv``).
        summary: the header of ``audit.json``.
        detection: detection figures when the truth is known, else ``None``.
        files: name -> path of every file written.
    """

    out_dir: Path
    record: RunRecord
    options: AuditOptions
    splits: dict[str, SplitAudit]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    detection: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the audit
def run_audit(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    options: AuditOptions | None = None,
    **overrides: Any,
) -> AuditResult:
    """Audits a run folder and writes the audit files.

    Args:
        run_dir: the run folder (``datalist.json``, ``dynamics/``, ``metrics.csv``).
        out_dir: where to write (default ``RUN_DIR/audit``).
        options: the :class:`AuditOptions` (defaults when ``None``).
        **overrides: fields of :class:`AuditOptions` to change (``run_audit(run, folds=4)``).

    Returns:
        The :class:`AuditResult`.

    Raises:
        FileNotFoundError: when the run folder has no ``datalist.json`` or no dynamics.
        ValueError: on invalid options, a multi-label run, or dynamics of another datalist.
    """
    from dataclasses import replace

    opts = replace(options or AuditOptions(), **overrides)
    record = RunRecord.read(run_dir, opts.splits)
    out = Path(out_dir) if out_dir is not None else record.root / RunDir.AUDIT
    train_dyn = record.dynamics["training"]
    window = scoring_window(record, opts.window, opts)
    oof = None
    if opts.folds:
        from lilaw_med.audit.crossfit import cross_fit

        oof = cross_fit(record.root, folds=opts.folds, overrides=opts.fold_overrides).aligned(train_dyn.ids)
    splits = {s: audit_split(record, s, opts, window=window, oof_probs=oof if s == "training" else None)
              for s in opts.splits if s in record.dynamics}
    rows = [row for a in splits.values() for row in _rows(record, a, opts.include_identifying)]
    summary = _summary(record, opts, splits)
    detection = None
    if record.truth is not None:
        detection = _detection(record, splits["training"], opts)
        summary["detection"] = {k: v for k, v in detection.items() if k != "curves"}

    files: dict[str, Path] = {}
    files[AuditFiles.CSV] = atomic_write(out / AuditFiles.CSV, _csv(rows))
    files[AuditFiles.JSON] = atomic_write(out / AuditFiles.JSON, json.dumps(to_jsonable({"summary": summary, "items": rows}), indent=1))
    flagged = sorted((r for r in rows if r["is_label_issue"]), key=lambda r: (r["split"] != "training", r["rank"]))
    reason = f"label issue ({opts.method}, {window.rule} window, confident-joint count)"
    files[AuditFiles.EXCLUDE] = atomic_write(
        out / AuditFiles.EXCLUDE, _csv([{**r, "reason": reason} for r in flagged], EXCLUDE_COLUMNS))
    if detection is not None:
        files[AuditFiles.DETECTION] = atomic_write(
            out / AuditFiles.DETECTION, json.dumps(to_jsonable({k: v for k, v in detection.items() if k != "curves"}), indent=1))
    result = AuditResult(out_dir=out, record=record, options=opts, splits=splits, rows=rows, summary=summary,
                         detection=detection, files=files)
    from lilaw_med.audit.html import render_html

    files[AuditFiles.HTML] = atomic_write(out / AuditFiles.HTML, render_html(result))
    logger.info("audit of %s: %d items, %d flagged; written to %s", record.root, len(rows), len(flagged), out)
    return result


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _rows(record: RunRecord, a: SplitAudit, include_identifying: bool) -> list[dict[str, Any]]:
    pred = a.predicted
    p_given = self_confidence(a.labels, np.nan_to_num(a.window_probs, nan=0.0))
    seen = np.isfinite(a.window_probs).all(axis=1)
    p_pred = np.where(seen, np.nan_to_num(a.window_probs, nan=-1.0).max(axis=1), np.nan)
    oof_given = None if a.oof_probs is None else self_confidence(a.labels, np.nan_to_num(a.oof_probs, nan=0.0))
    rows = []
    for j, item_id in enumerate(a.ids):
        item = record.items[item_id][1]
        row: dict[str, Any] = {
            "id": item_id, "split": a.split, "path": str(item.get("image", "")),
            "given_label": int(a.labels[j]), "given_class": record.class_name(int(a.labels[j])),
            "predicted_label": int(pred[j]), "predicted_class": record.class_name(int(pred[j])),
            "label_score": _f(a.scores[j]), "rank": int(a.rank[j]), "is_label_issue": bool(a.is_label_issue[j]),
            "difficulty": str(a.levels[j]), "p_given": _f(p_given[j]) if np.isfinite(a.window_probs[j]).all() else None,
            "p_predicted": _f(p_pred[j]), "oof_p_given": None if oof_given is None else _f(oof_given[j]),
            "mean_w_alpha": _f(a.terms["w_alpha"][j]), "mean_w_beta": _f(a.terms["w_beta"][j]),
            "mean_w_delta": _f(a.terms["w_delta"][j]), "mean_weight": _f(a.terms["weight"][j]),
            "epochs_seen": int(a.epochs_seen[j]) if a.epochs_seen is not None else 0,
        }
        row.update(dicom_uids(row["path"], include_identifying))
        if record.truth is not None:
            t = int(record.truth.get(item_id, int(a.labels[j])))  # items the noise left alone keep their label
            row["true_label"], row["true_class"] = t, record.class_name(t)
        rows.append(row)
    return rows


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
            "interval_confidence": noise.confidence,
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
def _detection(record: RunRecord, a: SplitAudit, opts: AuditOptions) -> dict[str, Any]:
    true = np.array([int(record.truth.get(i, a.labels[j])) for j, i in enumerate(a.ids)])  # type: ignore[union-attr]
    wrong = true != a.labels
    dyn = record.dynamics["training"].as_dict()
    last = choose_window(len(record.dynamics["training"].epochs), "last")
    scores = {"label_score": a.scores,
              "final_epoch_self_confidence": self_confidence(
                  a.labels, np.nan_to_num(window_pred_probs(dyn, a.labels, last, a.num_classes), nan=0.0))}
    note = ("label_score: the audit's score; final_epoch_self_confidence: p[given] recorded during the last training "
            "epoch (no extra pass)")
    if opts.final_model_baseline:
        sc = _final_model_self_confidence(record, a)
        if sc is not None:
            scores["final_model_self_confidence"] = sc
            note += "; final_model_self_confidence: p[given] of checkpoints/final_model.pt in eval mode"
    out: dict[str, Any] = {"n_items": int(wrong.size), "n_mislabeled": int(wrong.sum()),
                           "true_noise_rate": _f(wrong.mean()), "note": note + ".", "scores": {}, "curves": {}}
    for name, s in scores.items():
        out["scores"][name] = {k: _f(v) for k, v in detection_quality(s, wrong).items()}
        if 0 < wrong.sum() < wrong.size:
            out["curves"][name] = detection_curves(s, wrong)
    flags = a.is_label_issue
    tp = int((flags & wrong).sum())
    precision = tp / flags.sum() if flags.any() else math.nan
    recall = tp / wrong.sum() if wrong.any() else math.nan
    out["is_label_issue"] = {
        "n_flagged": int(flags.sum()), "precision": _f(precision), "recall": _f(recall),
        "f1": _f(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0,
        "count_error": _f(abs(int(flags.sum()) - int(wrong.sum())) / max(wrong.size, 1)),
    }
    out["noise_rate"] = [
        {"class": record.class_name(k), "true": _f(wrong[a.labels == k].mean()) if (a.labels == k).any() else None,
         "estimated": _f(a.noise.per_class[k]), "interval": [_f(v) for v in a.noise.per_class_interval[k]]}
        for k in range(a.num_classes)
    ]
    out["difficulty"] = {lv: {"n_items": int((a.levels == lv).sum()),
                              "true_mislabel_rate": _f(wrong[a.levels == lv].mean()) if (a.levels == lv).any() else None}
                         for lv in DIFFICULTY_LEVELS}
    return out


def _final_model_self_confidence(record: RunRecord, a: SplitAudit) -> np.ndarray | None:
    """p[given] of the run's final model on the split's items (one eval pass), or None when impossible."""
    from lilaw_med.audit.crossfit import item_probabilities

    try:
        probs = item_probabilities(record.root, [record.items[i][1] for i in a.ids], which="final")
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
    import pydicom

    from lilaw_med.data.readers import is_dicom_file, list_series_files

    out = {"study_instance_uid": "", "series_instance_uid": "", "sop_instance_uid": ""}
    if include_identifying:
        out["patient_id"] = ""
    p = Path(path)
    files = [str(p)] if is_dicom_file(p) else (list_series_files(p) if p.is_dir() else [])
    if not files:
        return out
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


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
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
