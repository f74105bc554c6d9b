"""``lilaw-med train --refine``: train, audit, exclude the suspected mislabels, retrain on the rest.

The refine folder holds ``initial/``, ``audit/``, ``refine_exclude.csv``, ``refined/`` and
``refine.json``; the second run leaves out exactly the items the audit flags (``is_label_issue``),
validation items only with ``exclude_validation``. The rule and its figures: docs/audit.md
(section 4).

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
from lilaw_med.data.curation import apply_exclusions
from lilaw_med.data.datalist import load_datalist
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir, default_run_name
from lilaw_med.training.run import run_training
from lilaw_med.utils import atomic_write
from lilaw_med.workflows.audit import run_audit

__all__ = ["DEFAULT_EXCLUDE_VALIDATION", "REFINE_RULE", "RefineResult", "run_refine"]

logger = logging.getLogger(__name__)

REFINE_RULE: dict[str, Any] = {"exclude": "is_label_issue", "audit": "shipped defaults (lilaw_med.audit.core)"}
"""The default exclusion rule of refine (see the module docstring)."""
DEFAULT_EXCLUDE_VALIDATION = False
"""Whether the retraining also leaves out the validation items the audit flags (``--refine-validation``);
how the default was chosen: docs/audit.md, section 4."""


@dataclass
class RefineResult:
    """What :func:`run_refine` returns.

    Attributes:
        run_dir: the refine folder.
        initial: the first run's result (``run_dir``, ``summary``).
        refined: the second run's result.
        n_excluded: how many training items the second run left out.
        refine: the content of ``refine.json``.
        summary: the refined run's ``summary.json`` (what ``lilaw-med train`` prints).
    """

    run_dir: Path
    initial: Any
    refined: Any
    n_excluded: int
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
        device: overrides ``train.device``.
        progress: overrides ``train.progress``.

    Returns:
        The :class:`RefineResult`.

    Raises:
        FileExistsError: when the refine folder exists and is not empty.
        ValueError, FileNotFoundError: as :func:`run_training` and :func:`lilaw_med.workflows.audit.run_audit`.

    Example::

        result = run_refine(load_config("configs/radiology_2d.yaml"), "runs/refined")
        result.n_excluded, result.refine["refined"]["best"]
    """

    cfg = Config.from_mapping(config)
    root = _refine_root(cfg, output_dir)
    if exclude_validation is None:
        exclude_validation = DEFAULT_EXCLUDE_VALIDATION

    logger.info("refine 1/3: training the initial run in %s", root / "initial")
    initial = run_training(cfg, root / "initial", device=device, progress=progress)
    logger.info("refine 2/3: auditing the initial run")
    audit = run_audit(initial.run_dir, root / RunDir.AUDIT, audit_options or AuditOptions())
    for w in audit.summary["splits"]["training"].get("warnings", []):
        logger.warning("refine: %s The exclusions may be close to random.", w)
    if exclude_validation and "validation" not in audit.summary["splits"]:
        logger.warning("refine: the validation items cannot be left out: the run recorded no validation dynamics "
                       "(they are recorded by LiLAW's meta step; lilaw.enabled is false), so the audit flagged none.")
    splits = ("training", "validation") if exclude_validation else ("training",)
    excluded = [row for row in audit.rows if row["split"] in splits and row["is_label_issue"]]
    # written as the audit writes its CSV files: a text cell a spreadsheet would run as a formula gets a
    # leading ' (read_id_csv, which apply_exclusions reads with, takes it off again)
    exclude_csv = atomic_write(root / "refine_exclude.csv",
                               csv_text(excluded, ["id", "split", "path", "given_label", "label_score", "rank"]))

    datalist = load_datalist(RunDir(initial.run_dir).datalist, class_names=cfg.data.class_names,
                             multi_label=cfg.data.multi_label)
    datalist = apply_exclusions(datalist, exclude_csv)
    logger.info("refine 3/3: retraining without %d suspected mislabels in %s", len(excluded), root / "refined")
    refined = run_training(cfg, root / "refined", device=device, progress=progress, datalist=datalist)

    summary = _refine_summary(audit, initial, refined, len(excluded), exclude_validation)
    atomic_write(root / "refine.json", json.dumps(summary, indent=2, default=str))
    logger.info(
        "refine: %d training items excluded; refine.json, both runs and the audit are in %s", len(excluded), root
    )
    return RefineResult(run_dir=root, initial=initial, refined=refined, n_excluded=len(excluded), refine=summary,
                        summary=dict(refined.summary or {}))


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
    audit: AuditResult, initial: Any, refined: Any, n_excluded: int, exclude_validation: bool
) -> dict[str, Any]:
    """``refine.json``: the rule, what the audit estimated and excluded, and both runs' metrics."""
    train_info = audit.summary["splits"]["training"]
    summary = {
        "rule": {**REFINE_RULE, "audit_options": asdict(audit.options), "exclude_validation": exclude_validation,
                 **({} if audit.options == AuditOptions() else {"audit": "the given audit_options"})},
        "n_excluded": n_excluded,
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
