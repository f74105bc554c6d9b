"""``lilaw-med train --refine``: train, audit, exclude the suspected mislabels, retrain on the rest.

The run folder of a refine holds both runs and the audit::

    RUN_DIR/
      initial/        the first run (a complete run folder, LiLAW as configured)
      audit/          the audit of the first run (audit.csv, report.html, exclude.csv, ...)
      refine_exclude.csv   the training items excluded from the second run
      refined/        the second run, on the kept training items (same config, same validation split)
      refine.json     the rule, the counts, and both runs' final/best metrics

The exclusion rule (:data:`REFINE_RULE`) needs no clean labels. It scores each training item by
its mean s[y] over the first 20% of the epochs (``mean_prob_label`` with ``epoch_fraction`` 0.2:
before the network memorises wrong labels), estimates each class's noise rate r_k as the share
of its items whose most frequent prediction over those epochs differs from the given label
(``"disagreement"``), and excludes the ``round(0.5 * r_k * n_k)`` lowest-scored items of each class
(half of the estimated count: the lowest-scored half is where the wrong labels are densest, and
excluding the full estimate also removes many right labels when detection is imperfect).
The validation split is kept as it is by default (``exclude_validation=False``). The score was
chosen on BreastMNIST and RetinaMNIST, the share excluded on BreastMNIST and PathMNIST-1000, all
with injected noise (see docs/audit.md), never on the data of the floors.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lilaw_med.utils import atomic_write

__all__ = ["REFINE_RULE", "RefineResult", "run_refine"]

logger = logging.getLogger(__name__)

REFINE_RULE: dict[str, Any] = {
    "method": "mean_prob_label",
    "epoch_fraction": 0.2,
    "rule": "noise_rate",
    "noise_rate_method": "disagreement",
    "fraction_of_estimate": 0.5,
}
"""The default exclusion rule of refine (see the module docstring)."""


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
    config: Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    *,
    rule: Mapping[str, Any] | None = None,
    exclude_validation: bool = False,
    device: str | None = None,
    progress: bool | None = None,
) -> RefineResult:
    """Trains, audits, excludes the suspected mislabels and retrains (see the module docstring).

    Args:
        config: the training config (as for :func:`lilaw_med.training.builder.run_training`).
        output_dir: the refine folder (``None``: the config's output folder and name, or a
            timestamped ``<preset>-...-refine``).
        rule: the exclusion rule (keys of :data:`REFINE_RULE`; unset keys take its values).
        exclude_validation: also drop the validation items the audit flags (from the meta step's
            records), so the meta step learns from cleaner labels.
        device: overrides ``train.device``.
        progress: overrides ``train.progress``.

    Returns:
        The :class:`RefineResult`.

    Raises:
        FileExistsError: when the refine folder exists and is not empty.
        ValueError, FileNotFoundError: as :func:`run_training` and :func:`lilaw_med.audit.report.run_audit`.
    """
    from lilaw_med.audit.report import run_audit
    from lilaw_med.audit.scores import early_epochs
    from lilaw_med.data.curation import apply_exclusions
    from lilaw_med.data.datalist import load_datalist
    from lilaw_med.training.builder import run_training
    from lilaw_med.training.config import validate_config
    from lilaw_med.training.run_dir import default_run_name

    r = {**REFINE_RULE, **(rule or {})}
    cfg = validate_config(config)
    if output_dir is None:
        out = cfg["output"]
        root = Path(out["dir"]) / (out["name"] or f"{default_run_name(cfg['data']['preset'])}-refine")
    else:
        root = Path(output_dir)
    if root.exists() and any(root.iterdir()) and not cfg["output"]["overwrite"]:
        raise FileExistsError(f"refine folder {root} exists and is not empty: choose another --output.")
    root.mkdir(parents=True, exist_ok=True)

    logger.info("refine 1/3: training the initial run in %s", root / "initial")
    initial = run_training(copy.deepcopy(config), root / "initial", device=device, progress=progress)
    epochs = int(initial.summary.get("epochs") or cfg["train"]["epochs"])
    max_epochs = r.get("max_epochs")
    if max_epochs is None and r.get("epoch_fraction") is not None:
        max_epochs = early_epochs(epochs, float(r["epoch_fraction"]))

    logger.info("refine 2/3: auditing the initial run")
    audit = run_audit(
        initial.run_dir, root / "audit", method=r["method"], max_epochs=max_epochs, rule=r["rule"],
        noise_rate_method=r["noise_rate_method"], noise_rate=r.get("noise_rate"), threshold=r.get("threshold"),
    )
    for w in audit.summary["splits"]["training"].get("warnings", []):
        logger.warning("refine: %s The exclusions may be close to random.", w)
    splits = ["training", "validation"] if exclude_validation else ["training"]
    frac = float(r.get("fraction_of_estimate", 1.0))
    excluded: list[dict[str, Any]] = []
    for split in splits:
        rows = [row for row in audit.rows if row["split"] == split]
        if r["rule"] != "noise_rate" or r.get("noise_rate") is not None or frac == 1.0:
            excluded += [row for row in rows if row["is_label_issue"]]
            continue
        for k, info in enumerate(audit.summary["splits"].get(split, {}).get("per_class", [])):
            members = sorted((row for row in rows if row["given_label"] == k and row["label_score"] is not None),
                             key=lambda row: row["rank"])
            excluded += members[: int(round(frac * (info["estimated_noise_rate"] or 0.0) * info["n_items"]))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "split", "path", "given_label", "label_score", "rank"])
    for row in excluded:
        w.writerow([row["id"], row["split"], row["path"], row["given_label"], row["label_score"], row["rank"]])
    exclude_csv = atomic_write(root / "refine_exclude.csv", buf.getvalue())

    datalist = load_datalist(initial.run_dir / "datalist.json", class_names=cfg["data"]["class_names"],
                             multi_label=cfg["data"]["multi_label"])
    datalist = apply_exclusions(datalist, exclude_csv)
    logger.info("refine 3/3: retraining without %d suspected mislabels in %s", len(excluded), root / "refined")
    refined = run_training(copy.deepcopy(config), root / "refined", device=device, progress=progress, datalist=datalist)

    summary = {
        "rule": {**r, "max_epochs": max_epochs, "exclude_validation": exclude_validation},
        "n_excluded": len(excluded),
        "estimated_noise_rate": audit.summary["splits"]["training"]["estimated_noise_rate"],
        "warnings": audit.summary["splits"]["training"].get("warnings", []),
        "initial": {"run_dir": str(initial.run_dir), **_metrics(initial.summary)},
        "refined": {"run_dir": str(refined.run_dir), **_metrics(refined.summary)},
        "audit": str(root / "audit"),
    }
    if audit.detection is not None:
        summary["detection"] = audit.summary.get("detection")
    atomic_write(root / "refine.json", json.dumps(summary, indent=2, default=str))
    logger.info(
        "refine: %d training items excluded; refine.json, both runs and the audit are in %s", len(excluded), root
    )
    return RefineResult(run_dir=root, initial=initial, refined=refined, n_excluded=len(excluded), refine=summary,
                        summary=dict(refined.summary or {}))
