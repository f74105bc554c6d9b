"""``lilaw-med evaluate``: the metrics of a trained run's model on its own splits or on another datalist."""

from __future__ import annotations

import os
from typing import Any

from lilaw_med.data.datalist import load_datalist
from lilaw_med.errors import InputError
from lilaw_med.training.evaluation import calibration_args, classification_metrics, run_inference
from lilaw_med.workflows.trained_run import TrainedRun

__all__ = ["evaluate_run"]


def evaluate_run(
    run_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    splits: str = "all",
    which: str = "best",
    device: str | None = None,
    calibrated: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluates a run's model on its validation/test splits or on another datalist.

    Example::

        report = evaluate_run("runs/radiology_2d-20260101-120000", splits="test")
        report["splits"]["test"]["balanced_accuracy"]

    Args:
        run_dir: the run folder.
        datalist: evaluate on every labelled item of this datalist instead (one split ``"datalist"``).
        splits: ``"validation"``, ``"test"`` or ``"all"`` (the run's own splits).
        which: ``"best"`` or ``"final"`` model.
        device: overrides the run's device.
        calibrated: apply the temperature/threshold fitted on the validation split during training.
        batch_size: inference batch size.

    Returns:
        ``{"checkpoint", "epoch", "calibration", "splits": {name: metrics}}`` (see
        :func:`lilaw_med.training.evaluation.classification_metrics`).

    Raises:
        FileNotFoundError: when the run folder, its model or the datalist is missing.
        InputError: when no labelled item is left to evaluate.
    """

    run = TrainedRun.load(run_dir, which, device)
    names = list(run.meta.get("class_names") or []) or None
    groups = _labelled_groups(run, datalist, splits, names)
    cal = run.calibration(calibrated)
    report: dict[str, Any] = {
        "checkpoint": run.meta["path"], "epoch": run.meta.get("epoch"), "calibration": cal, "splits": {},
    }
    for name, items in groups.items():
        logits, labels, _ = run_inference(run.network, run.loader(items, batch_size), run.device)
        report["splits"][name] = classification_metrics(
            logits, labels, names, multi_label=run.multi_label, n_bins=run.config.eval.ece_bins, **calibration_args(cal),
        )
    return report


def _labelled_groups(
    run: TrainedRun, datalist: str | os.PathLike | None, splits: str, names: list[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """Split name -> its labelled items: ``"datalist"`` for another datalist, else the run's own splits."""
    rd, multi = run.run_dir, run.multi_label
    if datalist is not None:
        dl = load_datalist(datalist, class_names=names, multi_label=multi, require_training=False)
        groups = {"datalist": [it for _, it in dl.iter_items() if it.get("label") is not None]}
    else:
        if not rd.datalist.is_file():
            raise FileNotFoundError(f"{rd.datalist} is missing; pass --datalist.")
        dl = load_datalist(rd.datalist, class_names=names, multi_label=multi)
        wanted = ("validation", "test") if splits == "all" else (splits,)
        groups = {s: [it for it in dl.split(s) if it.get("label") is not None] for s in wanted}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise InputError(f"nothing to evaluate: no labelled items in {datalist or rd.datalist} ({splits}).")
    return groups
