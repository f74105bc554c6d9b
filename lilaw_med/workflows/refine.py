"""``lilaw-med train --refine``: train, audit, exclude (or relabel) the suspected mislabels, retrain.

The refine folder holds ``initial/``, ``audit/``, ``refine_exclude.csv``, ``refined/`` and
``refine.json`` (and ``refine_relabel.csv`` when the flagged items are relabelled); the second run
leaves out exactly the training items the audit flags (``is_label_issue``), or keeps them with the
audit's predicted class as their label (``flagged="relabel"``); flagged validation items are left
out only with ``exclude_validation``. The rule and its figures: docs/audit.md (section 4).

Example::

    from lilaw_med.run.config import load_config
    from lilaw_med.workflows.refine import run_refine

    result = run_refine(load_config("configs/radiology_2d.yaml"), "runs/refined")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lilaw_med.audit.core import AuditOptions
from lilaw_med.audit.report import AuditFiles, AuditResult, csv_text
from lilaw_med.data.curation import apply_exclusions, apply_relabels
from lilaw_med.data.datalist import load_datalist
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir, default_run_name
from lilaw_med.training.run import run_training
from lilaw_med.utils import atomic_write
from lilaw_med.workflows.audit import run_audit

__all__ = ["DEFAULT_EXCLUDE_VALIDATION", "DEFAULT_REFINE_FLAGGED", "REFINE_FLAGGED", "REFINE_RULE", "RefineResult",
           "run_refine"]

logger = logging.getLogger(__name__)

REFINE_RULE: dict[str, Any] = {"exclude": "is_label_issue", "audit": "shipped defaults (lilaw_med.audit.core)"}
"""The default exclusion rule of refine (see the module docstring)."""
DEFAULT_EXCLUDE_VALIDATION = False
"""Whether the retraining also leaves out the validation items the audit flags (``--refine-validation``);
how the default was chosen: docs/audit.md, section 4."""
REFINE_FLAGGED = ("exclude", "relabel")
"""What the retraining does with the flagged training items (``--refine-flagged``): leave them out, or
keep them with the audit's predicted class as their label."""
DEFAULT_REFINE_FLAGGED = "exclude"
"""How the default was chosen: docs/audit.md, section 4."""


@dataclass
class RefineResult:
    """What :func:`run_refine` returns.

    Attributes:
        run_dir: the refine folder.
        initial: the first run's result (``run_dir``, ``summary``).
        refined: the second run's result.
        n_excluded: how many items (training, and validation with ``exclude_validation``) the second
            run left out.
        n_relabelled: how many training items the second run trained with the audit's predicted class.
        refine: the content of ``refine.json``.
        summary: the refined run's ``summary.json`` (what ``lilaw-med train`` prints).
    """

    run_dir: Path
    initial: Any
    refined: Any
    n_excluded: int
    n_relabelled: int = 0
    refine: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("final", "best", "best_epoch", "lilaw", "num_items")}


def run_refine(
    config: Config | Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    *,
    audit_options: AuditOptions | None = None,
    exclude_validation: bool | None = None,
    flagged: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> RefineResult:
    """Trains, audits, excludes the suspected mislabels and retrains (see the module docstring).

    Args:
        config: the training config (as for :func:`lilaw_med.training.run.run_training`).
        output_dir: the refine folder (``None``: the config's output folder and name, or a
            timestamped ``<preset>-...-refine``).
        audit_options: how the first run is audited (default: the shipped audit).
        exclude_validation: also drop the validation items the audit flags (from the meta step's
            records), so the retraining's meta step and best checkpoint read cleaner labels (``None``:
            :data:`DEFAULT_EXCLUDE_VALIDATION`).
        flagged: what the retraining does with the flagged training items, one of
            :data:`REFINE_FLAGGED` (``None``: :data:`DEFAULT_REFINE_FLAGGED`).
        device: overrides ``train.device``.
        progress: overrides ``train.progress``.

    Returns:
        The :class:`RefineResult`.

    Raises:
        FileExistsError: when the refine folder exists and is not empty.
        ValueError: for an unknown ``flagged``; as :func:`run_training` and
            :func:`lilaw_med.workflows.audit.run_audit`.
        FileNotFoundError: as :func:`run_training` and :func:`lilaw_med.workflows.audit.run_audit`.

    Example::

        result = run_refine(load_config("configs/radiology_2d.yaml"), "runs/refined")
        result.n_excluded, result.refine["refined"]["best"]
    """

    flagged = DEFAULT_REFINE_FLAGGED if flagged is None else flagged
    if flagged not in REFINE_FLAGGED:
        raise ValueError(f"flagged must be one of {REFINE_FLAGGED}, not {flagged!r}.")
    if exclude_validation is None:
        exclude_validation = DEFAULT_EXCLUDE_VALIDATION
    cfg = Config.from_mapping(config)
    root = _refine_root(cfg, output_dir)

    logger.info("refine 1/3: training the initial run in %s", root / "initial")
    initial = run_training(cfg, root / "initial", device=device, progress=progress)
    logger.info("refine 2/3: auditing the initial run")
    audit = run_audit(initial.run_dir, root / RunDir.AUDIT, audit_options or AuditOptions())
    for w in audit.summary["splits"]["training"].get("warnings", []):
        logger.warning("refine: %s The exclusions may be close to random.", w)
    if exclude_validation and "validation" not in audit.summary["splits"]:
        logger.warning("refine: the validation items cannot be left out: the run recorded no validation dynamics "
                       "(they are recorded by LiLAW's meta step; lilaw.enabled is false), so the audit flagged none.")
    suspects = [row for row in audit.rows if row["is_label_issue"]]
    # an item the network predicts as its given class has no other label to take: relabelling leaves it as it is
    relabelled = [{**row, "label": row["predicted_label"]} for row in suspects if flagged == "relabel"
                  and row["split"] == "training" and row["predicted_label"] >= 0
                  and row["predicted_label"] != row["given_label"]]
    excluded = [row for row in suspects if (row["split"] == "training" and flagged == "exclude")
                or (row["split"] == "validation" and exclude_validation)]
    # written as the audit writes its CSV files: a text cell a spreadsheet would run as a formula gets a
    # leading ' (read_id_csv, which apply_exclusions and apply_relabels read with, takes it off again)
    columns = ["id", "split", "path", "given_label", "label_score", "rank"]
    exclude_csv = atomic_write(root / "refine_exclude.csv", csv_text(excluded, columns))

    datalist = load_datalist(RunDir(initial.run_dir).datalist, class_names=cfg.data.class_names,
                             multi_label=cfg.data.multi_label)
    datalist = apply_exclusions(datalist, exclude_csv)
    if flagged == "relabel":
        relabel_csv = atomic_write(root / "refine_relabel.csv", csv_text(relabelled, [*columns[:4], "label", *columns[4:]]))
        datalist = apply_relabels(datalist, relabel_csv)
    logger.info("refine 3/3: retraining without %d and with %d relabelled suspected mislabels in %s", len(excluded),
                len(relabelled), root / "refined")
    refined = run_training(cfg, root / "refined", device=device, progress=progress, datalist=datalist)

    summary = _refine_summary(audit, initial, refined, len(excluded), exclude_validation, flagged, len(relabelled))
    atomic_write(root / "refine.json", json.dumps(summary, indent=2, default=str))
    logger.info("refine: %d items excluded, %d relabelled; refine.json, both runs and the audit are in %s",
                len(excluded), len(relabelled), root)
    return RefineResult(run_dir=root, initial=initial, refined=refined, n_excluded=len(excluded),
                        n_relabelled=len(relabelled), refine=summary, summary=dict(refined.summary or {}))


def _refine_root(cfg: Config, output_dir: str | os.PathLike | None) -> Path:
    """The refine folder, created: ``output_dir``, else the config's output folder and name (or a
    timestamped ``<preset>-...-refine``); it must be empty unless ``output.overwrite``."""
    if output_dir is None:
        out = cfg.output
        root = Path(out.dir) / (out.name or f"{default_run_name(cfg.data.preset)}-refine")
    else:
        root = Path(output_dir)
    if root.exists() and any(root.iterdir()) and not cfg.output.overwrite:
        raise FileExistsError(f"refine folder {root} exists and is not empty: choose another --output.")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _refine_summary(
    audit: AuditResult, initial: Any, refined: Any, n_excluded: int, exclude_validation: bool, flagged: str,
    n_relabelled: int,
) -> dict[str, Any]:
    """``refine.json``: the rule, what the audit estimated, excluded and relabelled, and both runs' metrics."""
    train_info = audit.summary["splits"]["training"]
    summary = {
        "rule": {**REFINE_RULE, "audit_options": asdict(audit.options), "exclude_validation": exclude_validation,
                 "flagged": flagged, **({} if audit.options == AuditOptions() else {"audit": "the given audit_options"})},
        "n_excluded": n_excluded,
        "n_relabelled": n_relabelled,
        "estimated_noise_rate": train_info["estimated_noise_rate"],
        "estimated_noise_rate_interval": train_info["estimated_noise_rate_interval"],
        "warnings": train_info.get("warnings", []),
        "initial": {"run_dir": str(initial.run_dir), **_metrics(initial.summary)},
        "refined": {"run_dir": str(refined.run_dir), **_metrics(refined.summary)},
        "audit": str(audit.out_dir / AuditFiles.HTML),
    }
    if audit.detection is not None:
        summary["detection"] = audit.summary.get("detection")
    return summary
