"""The audit of a run folder: ``audit.csv`` / ``audit.json``, ``exclude.csv``, ``detection.json``
(when the truth is known) and a self-contained ``report.html``.

:func:`run_audit` reads ``RUN_DIR/datalist.json``, ``RUN_DIR/config.yaml``, ``RUN_DIR/dynamics/``
(written by :class:`lilaw_med.handlers.DynamicsRecorder`) and ``RUN_DIR/lilaw_iterations.csv``,
scores every item with :mod:`lilaw_med.audit.scores` and writes to ``RUN_DIR/audit/`` (or ``out_dir``).

Columns of ``audit.csv`` (cleanlab's names where the meaning is the same):

``id, split, path, given_label, given_class, predicted_label, predicted_class, label_score, rank,
is_label_issue, mean_prob_label, mean_margin, mean_weight, mean_w_alpha, mean_w_beta, mean_w_delta,
difficulty, epochs_seen, study_instance_uid, series_instance_uid, sop_instance_uid``, plus
``true_label, true_class`` when a noise sidecar gives the truth (and ``patient_id`` only with
``include_identifying``).

* ``label_score``: the label quality score (:data:`DEFAULT_METHOD` unless chosen), in [0, 1],
  lower = more likely mislabeled; ``rank`` 1 is the most suspicious item of its split.
* ``is_label_issue``: the rule (:func:`lilaw_med.audit.scores.find_label_issues`) with thresholds
  per class; by default ``"noise_rate"``: in each class the ``round(r_k * n_k)`` lowest-scored
  items, ``r_k`` estimated from the run itself (no clean labels).
* ``predicted_label``: the class with the highest probability averaged over the epochs (for more
  than two classes, estimated from the recorded s[y] and max s).
* ``difficulty``: easy / moderate / hard, the LiLAW term that dominates on average over epochs
  (see :func:`lilaw_med.audit.scores.difficulty`).
* DICOM UIDs are read with pydicom (``stop_before_pixels``) for DICOM items; no patient name, id
  or other identifying tag is written unless ``include_identifying``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.audit import plots
from lilaw_med.audit.detection import detection_curves, detection_quality
from lilaw_med.audit.scores import (
    DEFAULT_EPOCH_FRACTION,
    DEFAULT_METHOD,
    DEFAULT_NOISE_RATE_METHOD,
    DEFAULT_RULE,
    DIFFICULTY_LEVELS,
    consensus_prediction,
    difficulty,
    early_epochs,
    estimate_noise_rate,
    find_label_issues,
    get_label_quality_scores,
    margins,
    order_label_issues,
)
from lilaw_med.handlers.dynamics import Dynamics, load_dynamics
from lilaw_med.utils import atomic_write

__all__ = [
    "DEFAULT_EPOCH_FRACTION",
    "DEFAULT_METHOD",
    "DEFAULT_NOISE_RATE_METHOD",
    "DEFAULT_RULE",
    "AuditResult",
    "dicom_uids",
    "predicted_labels",
    "render_html",
    "run_audit",
]

logger = logging.getLogger(__name__)

EXCLUDE_COLUMNS = ("id", "split", "path", "given_label", "given_class", "predicted_label", "predicted_class",
                   "label_score", "rank", "reason")


@dataclass
class AuditResult:
    """What :func:`run_audit` produced.

    Attributes:
        out_dir: the audit folder.
        rows: one dict per item (the columns of ``audit.csv``).
        summary: rule, method, thresholds, noise-rate estimates, counts (``audit.json``'s header).
        detection: detection figures when the truth is known, else ``None``.
        files: name -> path of every file written.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    detection: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- small helpers
def _class_name(names: Sequence[str] | None, k: int | None) -> str:
    if k is None or k < 0:
        return ""
    return str(names[k]) if names is not None and k < len(names) else str(k)


def predicted_labels(dynamics: Mapping[str, np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The class with the highest probability averaged over the epochs.

    Per epoch the recorder keeps s[y] of the given class and max s of the predicted one; the other
    classes' probabilities are unknown and count as 0 (exact for two classes, where the other
    class has ``1 - s[y]``).

    Args:
        dynamics: ``prob_label``, ``prob_max``, ``pred_label`` (E, N).
        labels: int (N,) given labels.
        num_classes: C.

    Returns:
        int64 (N,) classes (-1 for an item never seen).
    """
    x = np.asarray(dynamics["prob_label"], dtype=np.float64)
    m = np.asarray(dynamics["prob_max"], dtype=np.float64)
    p = np.asarray(dynamics["pred_label"]).astype(np.int64)
    e_count, n = x.shape
    acc = np.zeros((num_classes, n))
    cols = np.arange(n)
    for e in range(e_count):
        seen = np.isfinite(x[e]) & (p[e] >= 0)
        acc[labels[seen], cols[seen]] += x[e][seen]
        other = seen & (p[e] != labels)
        acc[p[e][other], cols[other]] += m[e][other]
        if num_classes == 2:
            agree = seen & (p[e] == labels)
            acc[1 - labels[agree], cols[agree]] += 1 - x[e][agree]
    out = acc.argmax(axis=0)
    out[~np.isfinite(x).any(axis=0)] = -1
    return out


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
    try:
        from lilaw_med.data.readers import is_dicom_file, list_series_files
    except ImportError:  # pragma: no cover - the data package is part of the toolkit
        return out
    p = Path(path)
    files = [str(p)] if is_dicom_file(p) else (list_series_files(p) if p.is_dir() else [])
    if not files:
        return out
    try:
        import pydicom

        tags = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"] + (["PatientID"] if include_identifying else [])
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=tags, force=True)
    except Exception as e:  # noqa: BLE001 - a broken header must not stop the audit
        logger.warning("could not read DICOM UIDs of %s: %s", path, e)
        return out
    out["study_instance_uid"] = str(getattr(ds, "StudyInstanceUID", "") or "")
    out["series_instance_uid"] = str(getattr(ds, "SeriesInstanceUID", "") or "")
    if p.is_file():
        out["sop_instance_uid"] = str(getattr(ds, "SOPInstanceUID", "") or "")
    if include_identifying:
        out["patient_id"] = str(getattr(ds, "PatientID", "") or "")
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _nanmean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0)


def _load_truth(run_dir: Path, datalist: Mapping[str, Any]) -> dict[str, int] | None:
    if not datalist.get("noise_sidecar"):
        return None
    try:
        from lilaw_med.data.noise import load_noise_truth

        truth = load_noise_truth(run_dir / "datalist.json")
    except Exception as e:  # noqa: BLE001 - the truth is optional
        logger.warning("noise sidecar named by the datalist could not be read (%s): no detection figures.", e)
        return None
    return {str(k): v for k, v in truth.items() if not isinstance(v, list)}


# ----------------------------------------------------------------------------- the audit
def run_audit(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = DEFAULT_METHOD,
    skip_epochs: int = 0,
    max_epochs: int | None = None,
    epoch_fraction: float | None = DEFAULT_EPOCH_FRACTION,
    rule: str = DEFAULT_RULE,
    noise_rate: float | None = None,
    noise_rate_method: str = DEFAULT_NOISE_RATE_METHOD,
    threshold: float | None = None,
    top_k: int = 8,
    splits: Sequence[str] = ("training", "validation"),
    thumbnails: bool = True,
    final_model_baseline: bool = True,
    include_identifying: bool = False,
) -> AuditResult:
    """Audits a run folder and writes the audit files.

    Args:
        run_dir: the run folder (with ``datalist.json`` and ``dynamics/``).
        out_dir: where to write (default ``RUN_DIR/audit``).
        method: the label quality score (:data:`lilaw_med.audit.scores.SCORE_METHODS`).
        skip_epochs: epochs left out at the start (see :func:`get_label_quality_scores`).
        max_epochs: use at most this many epochs (after ``skip_epochs``); overrides ``epoch_fraction``.
        epoch_fraction: use the first ``ceil(epoch_fraction * E)`` of the E recorded epochs (the
            default 0.2: before the network memorises wrong labels; chosen on BreastMNIST and
            RetinaMNIST, see docs/audit.md); ``None`` with ``max_epochs=None`` uses every epoch.
        rule: the ``is_label_issue`` rule (:data:`lilaw_med.audit.scores.ISSUE_RULES`).
        noise_rate: the rate for the ``"noise_rate"`` rule; estimated per class when ``None``.
        noise_rate_method: how the rate is estimated (:data:`lilaw_med.audit.scores.NOISE_RATE_METHODS`).
        threshold: the score threshold for the ``"threshold"`` rule.
        top_k: thumbnails per class in the report.
        splits: which recorded splits to audit (validation items are audited from the meta step's
            forward passes when they were recorded).
        thumbnails: embed image thumbnails in the report (reads the images).
        final_model_baseline: when the truth is known, also score the final model's
            self-confidence (one inference pass over the training items with
            ``checkpoints/final_model.pt``).
        include_identifying: add the DICOM PatientID column (off: no identifying tag is written).

    Returns:
        The :class:`AuditResult`.

    Raises:
        FileNotFoundError: when the run folder has no ``datalist.json`` or no dynamics.
        ValueError: on unknown methods/rules, a multi-label run, or dynamics whose ids the
            datalist does not hold.
    """
    rd = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else rd / "audit"
    datalist_path = rd / "datalist.json"
    if not datalist_path.is_file():
        raise FileNotFoundError(f"{rd} is not a run folder: datalist.json is missing.")
    datalist = json.loads(datalist_path.read_text(encoding="utf-8"))
    if datalist.get("multi_label"):
        raise ValueError("the audit supports single-label runs; this run is multi-label.")
    config = _read_yaml(rd / "config.yaml")
    names = datalist.get("class_names")
    items: dict[str, tuple[str, dict[str, Any]]] = {}
    for split in ("training", "validation", "test"):
        for it in datalist.get(split, []):
            items[str(it["id"])] = (split, it)
    truth = _load_truth(rd, datalist)

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "run_dir": str(rd.absolute()), "method": method, "skip_epochs": skip_epochs, "max_epochs": max_epochs,
        "epoch_fraction": epoch_fraction if max_epochs is None else None,
        "rule": rule, "noise_rate_method": noise_rate_method if noise_rate is None else None,
        "class_names": names, "splits": {},
    }
    per_split: dict[str, dict[str, Any]] = {}
    for split in splits:
        try:
            dyn = load_dynamics(rd, split=split)
        except ValueError:
            if split == "training":
                raise
            continue
        if not dyn.epochs:
            continue
        window = max_epochs
        if window is None and epoch_fraction is not None:
            window = early_epochs(max(len(dyn.epochs) - skip_epochs, 1), epoch_fraction)
        per_split[split] = _audit_split(
            dyn, split, items, names, truth, method, skip_epochs, window, rule, noise_rate,
            noise_rate_method, threshold, include_identifying,
        )
        rows.extend(per_split[split]["rows"])
        summary["splits"][split] = per_split[split]["summary"]
    if "training" not in per_split:
        raise FileNotFoundError(f"{rd}: no training dynamics recorded yet.")
    summary["lilaw_by_epoch"] = per_split["training"]["dynamics"].lilaw

    detection = None
    if truth is not None:
        detection = _detection(rd, per_split["training"], truth, final_model_baseline, config)
        summary["detection"] = {k: v for k, v in detection.items() if k != "curves"}

    files: dict[str, Path] = {}
    files["audit.csv"] = atomic_write(out / "audit.csv", _csv(rows))
    files["audit.json"] = atomic_write(
        out / "audit.json", json.dumps(_jsonable({"summary": summary, "items": rows}), indent=1)
    )
    flagged = [r for r in rows if r["is_label_issue"]]
    flagged.sort(key=lambda r: (r["split"] != "training", r["rank"]))
    exclude_rows = [{**{k: r.get(k, "") for k in EXCLUDE_COLUMNS if k != "reason"},
                     "reason": f"label issue ({rule}, {method})"} for r in flagged]
    files["exclude.csv"] = atomic_write(out / "exclude.csv", _csv(exclude_rows, EXCLUDE_COLUMNS))
    if detection is not None:
        files["detection.json"] = atomic_write(
            out / "detection.json", json.dumps(_jsonable({k: v for k, v in detection.items() if k != "curves"}), indent=1)
        )
    html_text = render_html(rd, rows, summary, per_split, detection, config, top_k=top_k, thumbnails=thumbnails)
    files["report.html"] = atomic_write(out / "report.html", html_text)
    logger.info("audit of %s: %d items, %d flagged; written to %s", rd, len(rows), len(flagged), out)
    return AuditResult(out_dir=out, rows=rows, summary=summary, detection=detection, files=files)


def _audit_split(
    dyn: Dynamics, split: str, items: Mapping[str, tuple[str, dict[str, Any]]], names: Sequence[str] | None,
    truth: Mapping[str, int] | None, method: str, skip_epochs: int, max_epochs: int | None, rule: str,
    noise_rate: float | None, noise_rate_method: str, threshold: float | None, include_identifying: bool,
) -> dict[str, Any]:
    missing = [i for i in dyn.ids if i not in items]
    if missing:
        raise ValueError(
            f"{len(missing)} {split} id(s) of the dynamics are not in the run's datalist.json (e.g. {missing[0]!r}): "
            "the dynamics belong to another datalist."
        )
    d = dyn.as_dict()
    labels = np.array([int(items[i][1]["label"]) for i in dyn.ids], dtype=np.int64)
    n_classes = max(len(names) if names else 0, int(labels.max()) + 1, int(np.nanmax(d["pred_label"])) + 1)
    q = get_label_quality_scores(d, method=method, skip_epochs=skip_epochs, max_epochs=max_epochs)
    consensus = consensus_prediction(d["pred_label"], skip_epochs=skip_epochs, max_epochs=max_epochs)
    flags, thresholds = find_label_issues(
        q, labels, rule=rule, noise_rate=noise_rate, threshold=threshold, pred_labels=consensus,
        num_classes=n_classes, noise_rate_method=noise_rate_method, return_thresholds=True,
    )
    rates = estimate_noise_rate(q, labels, method=noise_rate_method, per_class=True, pred_labels=consensus,
                                num_classes=n_classes)
    pred = predicted_labels(d, labels, n_classes)
    mean_x = _nanmean(d["prob_label"])
    mean_margin = _nanmean(margins(d))
    mean_w = _nanmean(d["weight"])
    terms = {k: _nanmean(d[k]) for k in ("w_alpha", "w_beta", "w_delta")}
    level = difficulty(d, skip_epochs=skip_epochs)
    seen = (d["count"] > 0).sum(axis=0)
    rank = np.empty(len(q), dtype=np.int64)
    rank[order_label_issues(q)] = np.arange(1, len(q) + 1)

    rows = []
    for j, item_id in enumerate(dyn.ids):
        item = items[item_id][1]
        row: dict[str, Any] = {
            "id": item_id, "split": split, "path": str(item.get("image", "")),
            "given_label": int(labels[j]), "given_class": _class_name(names, int(labels[j])),
            "predicted_label": int(pred[j]), "predicted_class": _class_name(names, int(pred[j])),
            "label_score": _f(q[j]), "rank": int(rank[j]), "is_label_issue": bool(flags[j]),
            "mean_prob_label": _f(mean_x[j]), "mean_margin": _f(mean_margin[j]), "mean_weight": _f(mean_w[j]),
            "mean_w_alpha": _f(terms["w_alpha"][j]), "mean_w_beta": _f(terms["w_beta"][j]),
            "mean_w_delta": _f(terms["w_delta"][j]), "difficulty": str(level[j]), "epochs_seen": int(seen[j]),
        }
        row.update(dicom_uids(row["path"], include_identifying))
        if truth is not None:
            t = truth.get(item_id, int(labels[j]))  # items the noise left alone keep their label
            row["true_label"] = int(t)
            row["true_class"] = _class_name(names, int(t))
        rows.append(row)
    counts = np.bincount(labels, minlength=n_classes)
    warnings_: list[str] = []
    window = d["pred_label"][skip_epochs:][: max_epochs or None] if skip_epochs < len(dyn.epochs) else d["pred_label"][-1:]
    seen_w = window >= 0
    agreement = float((window == labels[None, :])[seen_w].mean()) if seen_w.any() else math.nan
    chance = float(counts.max() / max(counts.sum(), 1))
    if math.isfinite(agreement) and agreement < chance + 0.02:
        warnings_.append(
            f"in the scored epochs the network's predictions agree with the given {split} labels no better than "
            f"always predicting the largest class ({agreement:.3f} vs {chance:.3f}): it had not learnt yet, so the "
            "scores and the noise-rate estimate are unreliable. Score more epochs (--epoch-fraction / --max-epochs) "
            "or train longer."
        )
        logger.warning("audit of the %s items: %s", split, warnings_[-1])
    split_summary = {
        "n_items": len(rows), "n_epochs": len(dyn.epochs), "epochs_scored": max_epochs or len(dyn.epochs),
        "n_label_issues": int(flags.sum()),
        "per_class": [
            {"class": _class_name(names, k), "n_items": int(counts[k]), "n_label_issues": int(flags[labels == k].sum()),
             "estimated_noise_rate": _f(rates[k]), "threshold": _f(thresholds[k]),
             "difficulty": {lv: int(((level == lv) & (labels == k)).sum()) for lv in DIFFICULTY_LEVELS}}
            for k in range(n_classes)
        ],
        "estimated_noise_rate": _f(float((rates * counts).sum() / max(counts.sum(), 1))),
        "agreement_in_scored_epochs": _f(agreement), "largest_class_share": _f(chance),
        "warnings": warnings_,
    }
    return {"rows": rows, "summary": split_summary, "dynamics": dyn, "labels": labels, "scores": q,
            "flags": flags, "pred": pred, "dict": d, "names": names}


def _detection(rd: Path, train: Mapping[str, Any], truth: Mapping[str, int], final_model_baseline: bool,
               config: Mapping[str, Any]) -> dict[str, Any]:
    dyn: Dynamics = train["dynamics"]
    labels = train["labels"]
    true = np.array([int(truth.get(i, labels[j])) for j, i in enumerate(dyn.ids)])
    mislabeled = true != labels
    scores = {"label_score": train["scores"],
              "final_epoch_self_confidence": get_label_quality_scores(train["dict"], method="self_confidence")}
    note = "final_epoch_self_confidence: s[y] recorded during the last training epoch (no extra pass)."
    if final_model_baseline:
        sc = _final_model_self_confidence(rd, dyn.ids, labels, config)
        if sc is not None:
            scores["final_model_self_confidence"] = sc
            note += " final_model_self_confidence: s[y] of checkpoints/final_model.pt in eval mode."
    out: dict[str, Any] = {"n_items": int(len(labels)), "n_mislabeled": int(mislabeled.sum()),
                           "true_noise_rate": _f(mislabeled.mean()), "note": note, "scores": {}, "curves": {}}
    for name, s in scores.items():
        out["scores"][name] = {k: _f(v) for k, v in detection_quality(s, mislabeled).items()}
        if 0 < mislabeled.sum() < len(labels):
            out["curves"][name] = detection_curves(s, mislabeled)
    flags = train["flags"]
    out["is_label_issue"] = {
        "n_flagged": int(flags.sum()),
        "precision": _f(mislabeled[flags].mean()) if flags.any() else None,
        "recall": _f(flags[mislabeled].mean()) if mislabeled.any() else None,
    }
    return out


def _final_model_self_confidence(rd: Path, ids: Sequence[str], labels: np.ndarray, config: Mapping[str, Any]) -> np.ndarray | None:
    """s[y] of the run's final model on the training items (one eval pass), or None when impossible."""
    try:
        from monai.data import DataLoader, Dataset

        from lilaw_med.data.transforms import build_transforms
        from lilaw_med.training.builder import load_model, transform_options
        from lilaw_med.training.config import validate_config
        from lilaw_med.training.evaluation import probabilities, run_inference

        cfg = validate_config(config)
        network, _ = load_model(rd, "final", "cpu")
        datalist = json.loads((rd / "datalist.json").read_text(encoding="utf-8"))
        by_id = {str(it["id"]): it for it in datalist.get("training", [])}
        items = [by_id[i] for i in ids]
        transforms = build_transforms(cfg["data"]["preset"], transform_options(cfg), train=False)
        loader = DataLoader(Dataset(items, transforms), batch_size=int(cfg["train"].get("batch_size", 32)), shuffle=False)
        logits, _, out_ids = run_inference(network, loader, "cpu")
        probs = probabilities(logits)
        if list(out_ids) != list(ids):
            order = {i: k for k, i in enumerate(out_ids)}
            probs = probs[[order[i] for i in ids]]
        return probs[np.arange(len(ids)), labels]
    except Exception as e:  # noqa: BLE001 - a baseline must not stop the audit
        logger.warning("final-model self-confidence baseline skipped (%s: %s).", type(e).__name__, e)
        return None


# ----------------------------------------------------------------------------- writers
def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    return obj


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)))
                    for k in columns})
    return buf.getvalue()


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:150px;font-size:.75em;border:1px solid #ddd;padding:.3em;background:#fafafa}
figure img{width:140px;height:auto;image-rendering:pixelated;display:block;margin:auto}
figcaption{word-break:break-all}.issue{color:#b00020;font-weight:600}.muted{color:#666}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _thumb_loader(config: Mapping[str, Any]):  # noqa: ANN202
    """A function item -> uint8 display image, through the run's own evaluation transforms."""
    transforms = None
    try:
        from lilaw_med.data.transforms import build_transforms
        from lilaw_med.training.builder import transform_options
        from lilaw_med.training.config import validate_config

        cfg = validate_config(config)
        transforms = build_transforms(cfg["data"]["preset"], transform_options(cfg), train=False)
    except Exception as e:  # noqa: BLE001 - fall back to the plain reader
        logger.info("thumbnails use the plain image reader (%s: %s).", type(e).__name__, e)

    def load(item: Mapping[str, Any]) -> np.ndarray:
        if transforms is not None:
            data = transforms({**item, "label": item.get("label", 0)})
            image = data["image"]
        else:
            from monai.transforms import LoadImage

            image = LoadImage(image_only=True, ensure_channel_first=True)(item["image"])
        return plots.to_display(np.asarray(image))

    return load


def _figure_html(row: Mapping[str, Any], uri: str | None, error: str | None) -> str:
    img = f'<img alt="{_e(row["id"])}" src="{uri}">' if uri else f'<div class="muted">no image: {_e(error)}</div>'
    truth = f"<br>true: {_e(row['true_class'])}" if "true_class" in row else ""
    return (
        f"<figure>{img}<figcaption><b>{_e(row['id'])}</b><br>given: {_e(row['given_class'])} · "
        f"predicted: {_e(row['predicted_class'])}<br>score {_e(_fmt(row['label_score']))} · rank {_e(row['rank'])}"
        f"<br>{_e(row['difficulty'])}{truth}</figcaption></figure>"
    )


def _fmt(v: Any, digits: int = 3) -> str:
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{plots.data_uri(png)}">'


def _iteration_series(rd: Path) -> tuple[list[float], dict[str, list[float]]] | None:
    path = rd / "lilaw_iterations.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"iteration", "alpha", "beta", "delta"} <= set(rows[0]):
        return None
    x = [float(r["iteration"]) for r in rows]
    return x, {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in ("alpha", "beta", "delta")}


def render_html(
    rd: Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], per_split: Mapping[str, Mapping[str, Any]],
    detection: Mapping[str, Any] | None, config: Mapping[str, Any], top_k: int = 8, thumbnails: bool = True,
) -> str:
    """The self-contained report (every picture embedded as a ``data:`` URI; no external resource).

    Every field that comes from data (ids, paths, class names) is HTML-escaped.

    Returns:
        The HTML text.
    """
    names = summary.get("class_names")
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>Audit of {_e(rd.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Label audit of run <code>{_e(rd.name)}</code></h1>",
        f"<p>Score <b>{_e(summary['method'])}</b> (lower = more likely mislabeled); issue rule <b>{_e(summary['rule'])}</b>"
        + (f" with the noise rate estimated per class by <b>{_e(summary['noise_rate_method'])}</b>" if summary.get("noise_rate_method") else "")
        + ". Difficulty: the LiLAW term that dominates on average over the epochs "
        "(W<sub>alpha</sub> easy, W<sub>delta</sub> moderate, W<sub>beta</sub> hard).</p>",
    ]
    # ---- counts
    for split, info in summary["splits"].items():
        parts.append(f"<h2>{_e(split.capitalize())} items: {info['n_items']} audited, "
                     f"{info['n_label_issues']} suspected mislabels (estimated noise rate {_e(_fmt(info['estimated_noise_rate']))})</h2>")
        for w in info.get("warnings", []):
            parts.append(f"<p class='issue'>Warning: {_e(w)}</p>")
        head = "".join(f"<th>{_e(lv)}</th>" for lv in DIFFICULTY_LEVELS)
        parts.append(f"<table><tr><th class='l'>class</th><th>items</th>{head}<th>est. noise rate</th>"
                     "<th>score threshold</th><th>flagged</th></tr>")
        for c in info["per_class"]:
            cells = "".join(f"<td>{c['difficulty'][lv]}</td>" for lv in DIFFICULTY_LEVELS)
            parts.append(f"<tr><td class='l'>{_e(c['class'])}</td><td>{c['n_items']}</td>{cells}"
                         f"<td>{_e(_fmt(c['estimated_noise_rate']))}</td><td>{_e(_fmt(c['threshold']))}</td>"
                         f"<td class='issue'>{c['n_label_issues']}</td></tr>")
        parts.append("</table>")

    load = _thumb_loader(config) if thumbnails else None
    item_by_id: dict[str, Mapping[str, Any]] = {}
    datalist = json.loads((rd / "datalist.json").read_text(encoding="utf-8"))
    for split in ("training", "validation", "test"):
        for it in datalist.get(split, []):
            item_by_id[str(it["id"])] = it

    def gallery(selected: Sequence[Mapping[str, Any]]) -> str:
        figs = []
        for r in selected:
            uri, err = None, None
            if load is not None:
                try:
                    uri = plots.data_uri(plots.thumbnail_png(load(item_by_id[r["id"]])))
                except Exception as e:  # noqa: BLE001 - one unreadable image must not stop the report
                    err = f"{type(e).__name__}: {e}"
            else:
                err = "thumbnails switched off"
            figs.append(_figure_html(r, uri, err))
        return "<div class='grid'>" + "".join(figs) + "</div>" if figs else "<p class='muted'>none</p>"

    training = [r for r in rows if r["split"] == "training"]
    n_classes = len(summary["splits"]["training"]["per_class"])
    parts.append(f"<h2>Top {top_k} suspected mislabels per given class (training)</h2>")
    for k in range(n_classes):
        sel = sorted((r for r in training if r["given_label"] == k and r["is_label_issue"]), key=lambda r: r["rank"])[:top_k]
        parts.append(f"<h3>given {_e(_class_name(names, k))}</h3>{gallery(sel)}")
    val_rows = [r for r in rows if r["split"] == "validation" and r["is_label_issue"]]
    if val_rows:
        parts.append(f"<h2>Top {top_k} suspected mislabels among the validation items</h2>")
        parts.append(gallery(sorted(val_rows, key=lambda r: r["rank"])[:top_k]))
    hard = sorted((r for r in training if not r["is_label_issue"] and r["predicted_label"] == r["given_label"]
                   and r["mean_prob_label"] is not None), key=lambda r: r["mean_prob_label"])[:top_k]
    parts.append(f"<h2>Hardest correctly-labelled cases (training; not flagged, predicted = given; lowest mean s[y])</h2>"
                 f"{gallery(hard)}")

    # ---- LiLAW scalars and weights
    parts.append("<h2>LiLAW over training</h2>")
    series = _iteration_series(rd)
    if series is not None:
        parts.append(_img(plots.lines_png(series[0], series[1], "alpha, beta, delta", "iteration"), "alpha beta delta"))
    else:
        lil = summary.get("lilaw_by_epoch") or {}
        if lil:
            ep = sorted(int(e) for e in lil)
            parts.append(_img(plots.lines_png(ep, {k: [lil[e][k] for e in ep] for k in ("alpha", "beta", "delta")},
                                              "alpha, beta, delta (end of epoch)", "epoch"), "alpha beta delta"))
    train = per_split["training"]
    w = train["dict"]["weight"]
    flags = train["flags"]
    mean_w = _nanmean(w)
    parts.append(_img(plots.histogram_png({"suspected mislabels": mean_w[flags], "other items": mean_w[~flags]},
                                          "mean LiLAW weight per item", "weight (0 to 3)"), "weight histogram"))
    parts.append(_img(plots.histogram_png({f"epoch {train['dynamics'].epochs[0]}": w[0], f"epoch {train['dynamics'].epochs[-1]}": w[-1]},
                                          "LiLAW weights, first and last epoch", "weight (0 to 3)"), "weights per epoch"))

    # ---- detection
    if detection is not None:
        parts.append(f"<h2>Detection quality against the noise sidecar's truth ({detection['n_mislabeled']} of "
                     f"{detection['n_items']} training labels wrong)</h2>")
        parts.append("<table><tr><th class='l'>score</th><th>AUROC</th><th>average precision</th>"
                     "<th>precision at the true noise count</th></tr>")
        for name, m in detection["scores"].items():
            parts.append(f"<tr><td class='l'>{_e(name)}</td><td>{_e(_fmt(m['auroc']))}</td>"
                         f"<td>{_e(_fmt(m['average_precision']))}</td><td>{_e(_fmt(m['precision_at_noise_count']))}</td></tr>")
        parts.append("</table>")
        flag_info = detection["is_label_issue"]
        parts.append(f"<p>is_label_issue: {flag_info['n_flagged']} flagged, precision {_e(_fmt(flag_info['precision']))}, "
                     f"recall {_e(_fmt(flag_info['recall']))}. <span class='muted'>{_e(detection['note'])}</span></p>")
        if detection.get("curves"):
            aurocs = {k: v["auroc"] for k, v in detection["scores"].items() if v["auroc"] is not None}
            parts.append(_img(plots.curves_png(detection["curves"], aurocs), "ROC and precision-recall curves"))
    parts.append("<p class='muted'>Columns of audit.csv: see docs/audit.md. This page is self-contained and makes "
                 "no network request.</p></body></html>")
    return "\n".join(parts)
