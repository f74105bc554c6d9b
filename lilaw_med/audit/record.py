"""What the audit reads from a run folder, read once: :class:`RunRecord`."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.noise import load_noise_truth
from lilaw_med.errors import InputError
from lilaw_med.run.dynamics_format import Dynamics, load_dynamics
from lilaw_med.run.run_dir import RunDir

__all__ = ["RunRecord"]

logger = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """Everything the audit reads from a run folder.

    Attributes:
        root: the run folder.
        config: its ``config.yaml`` (as written by training).
        datalist: its resolved ``datalist.json``.
        items: id -> (split, item) over every split.
        class_names: the class names (may be empty).
        dynamics: split -> :class:`Dynamics` for the recorded splits.
        val_loss: (E,) the noisy validation loss per recorded training epoch: the mean loss of the
            meta step's validation forwards (out-of-sample, every epoch, recorded in the validation
            dynamics) when recorded, else ``val_loss`` of ``metrics.csv`` (the end-of-epoch evaluation);
            NaN where absent.
        val_accuracy: (E,) ``val_accuracy`` of ``metrics.csv``.
        lilaw_iterations: ``(iterations, {"alpha": [...], ...})`` from ``lilaw_iterations.csv``, or None.
        truth: id -> true label when the datalist's noise sidecar gives it, else None.
        val_loss_source: where :attr:`val_loss` comes from (``"meta step"`` or ``"metrics.csv"``).
        epoch_val_loss: (E,) ``val_loss`` of ``metrics.csv``: the model at the end of each epoch on
            the validation split; NaN where absent, and all NaN when the run validated less often
            than every epoch (``eval.interval`` > 1: the skipped epochs repeat a stale value).
    """

    root: Path
    config: dict[str, Any]
    datalist: dict[str, Any]
    items: dict[str, tuple[str, dict[str, Any]]]
    class_names: list[str]
    dynamics: dict[str, Dynamics]
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    lilaw_iterations: tuple[list[float], dict[str, list[float]]] | None = None
    truth: dict[str, int] | None = None
    val_loss_source: str = "metrics.csv"
    epoch_val_loss: np.ndarray | None = None

    @classmethod
    def read(cls, run_dir: str | os.PathLike, splits: Sequence[str] = ("training", "validation")) -> RunRecord:
        """Reads a run folder.

        Example::

            record = RunRecord.read("runs/radiology_2d-20260101-120000")
            labels = record.labels(record.dynamics["training"].ids)

        Raises:
            FileNotFoundError: without ``datalist.json`` or training dynamics.
            InputError: for a multi-label run, or dynamics whose ids the datalist does not hold.
        """

        rd = RunDir(run_dir)
        datalist = _read_datalist(rd)
        config = rd.read_config() if rd.config.is_file() else {}
        items = {str(it["id"]): (split, it) for split in ("training", "validation", "test")
                 for it in datalist.get(split, [])}
        dynamics = _read_dynamics(rd, splits, items)
        epochs = dynamics["training"].epochs
        curves = _metric_curves(rd.metrics_csv, epochs, ("val_loss", "val_accuracy"))
        meta_loss = _meta_loss_curve(dynamics.get("validation"), epochs)
        from_meta = bool(np.isfinite(meta_loss).any())
        return cls(
            root=rd.root, config=config, datalist=datalist, items=items,
            class_names=list(datalist.get("class_names") or []), dynamics=dynamics,
            val_loss=meta_loss if from_meta else curves["val_loss"], val_accuracy=curves["val_accuracy"],
            val_loss_source="meta step" if from_meta else "metrics.csv",
            lilaw_iterations=_iteration_series(rd.lilaw_iterations), truth=_load_truth(rd.datalist, datalist),
            epoch_val_loss=curves["val_loss"] if _eval_every_epoch(config) else np.full(len(epochs), np.nan),
        )

    def labels(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([int(self.items[i][1]["label"]) for i in ids], dtype=np.int64)

    def class_name(self, k: int | None) -> str:
        if k is None or k < 0:
            return ""
        return self.class_names[k] if k < len(self.class_names) else str(k)


def _read_datalist(rd: RunDir) -> dict[str, Any]:
    """The run's resolved ``datalist.json``; raises for a missing one or a multi-label run."""
    if not rd.datalist.is_file():
        raise FileNotFoundError(f"{rd.root} is not a run folder: {RunDir.DATALIST} is missing.")
    datalist = json.loads(rd.datalist.read_text(encoding="utf-8"))
    if datalist.get("multi_label"):
        raise InputError(f"{rd.root}: the audit supports single-label runs; this run is multi-label.")
    return datalist


def _read_dynamics(
    rd: RunDir, splits: Sequence[str], items: Mapping[str, Any]
) -> dict[str, Dynamics]:
    """split -> dynamics of the ``splits`` recorded with one epoch or more (training is required)."""
    dynamics: dict[str, Dynamics] = {}
    for split in splits:
        try:
            dyn = load_dynamics(rd.root, split=split)
        except ValueError:
            if split == "training":
                raise
            continue
        if dyn.epochs:
            missing = [i for i in dyn.ids if i not in items]
            if missing:
                raise InputError(f"{len(missing)} {split} id(s) of the dynamics are not in {rd.datalist} "
                                 f"(e.g. {missing[0]!r}): the dynamics belong to another datalist.")
            dynamics[split] = dyn
    if "training" not in dynamics:
        raise FileNotFoundError(f"{rd.root}: no training dynamics recorded yet.")
    return dynamics


def _metric_curves(path: Path, epochs: Sequence[int], keys: Sequence[str]) -> dict[str, np.ndarray]:
    rows: dict[int, dict[str, str]] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            rows = {int(r["epoch"]): r for r in csv.DictReader(f) if r.get("epoch")}

    def value(e: int, k: str) -> float:
        v = rows.get(e, {}).get(k)
        try:
            return float(v) if v not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {k: np.array([value(e, k) for e in epochs], dtype=np.float64) for k in keys}


def _eval_every_epoch(config: Mapping[str, Any]) -> bool:
    """Whether the run validated after every epoch (``eval.interval`` 1, the default)."""
    ev = config.get("eval") if isinstance(config, Mapping) else None
    try:
        return int((ev or {}).get("interval", 1)) == 1
    except (TypeError, ValueError):
        return False


def _meta_loss_curve(val: Dynamics | None, epochs: Sequence[int]) -> np.ndarray:
    """The meta step's mean validation loss per training epoch (NaN where not recorded)."""
    out = np.full(len(epochs), np.nan)
    if val is None:
        return out
    by_epoch = dict(zip(val.epochs, val.records, strict=True))
    for j, e in enumerate(epochs):
        if e in by_epoch:
            loss = np.asarray(by_epoch[e]["loss"], dtype=np.float64)
            if np.isfinite(loss).any():
                out[j] = float(np.nanmean(loss))
    return out


def _iteration_series(path: Path) -> tuple[list[float], dict[str, list[float]]] | None:
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"iteration", "alpha", "beta", "delta"} <= set(rows[0]):
        return None
    x = [float(r["iteration"]) for r in rows]
    return x, {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in ("alpha", "beta", "delta")}


def _load_truth(path: Path, datalist: Mapping[str, Any]) -> dict[str, int] | None:
    if not datalist.get("noise_sidecar"):
        return None

    try:
        truth = load_noise_truth(path)
    except (OSError, ValueError) as e:
        logger.warning("the noise sidecar named by %s could not be read (%s): no detection figures.", path, e)
        return None
    return {str(k): int(v) for k, v in truth.items() if not isinstance(v, list)}
