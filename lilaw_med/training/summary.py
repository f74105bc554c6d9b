"""The end of a training run: the final model, calibration on the validation split, the final and
best models' metrics on validation and test, and ``summary.json`` (:func:`finish_run`)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from lilaw_med.run.config import ConfigError
from lilaw_med.run.model_file import read_model_file
from lilaw_med.run.run_dir import RunDir
from lilaw_med.training.evaluation import (
    apply_calibration,
    calibration_args,
    choose_class_bias,
    choose_threshold,
    classification_metrics,
    fit_temperature,
    run_inference,
)
from lilaw_med.training.model import checkpoint_meta
from lilaw_med.training.trainer import TrainingComponents
from lilaw_med.training.validation import EpochValidation
from lilaw_med.utils import atomic_save_torch

__all__ = ["finish_run"]


def _split_metrics(
    c: TrainingComponents, loader: Any, cal: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Any, Any]:
    logits, labels, _ = run_inference(c.network, loader, c.device, c.amp, channels_last=c.channels_last)
    metrics = classification_metrics(
        logits, labels, c.datalist.class_names, multi_label=c.config.data.multi_label,
        n_bins=c.config.eval.ece_bins, **calibration_args(cal),
    )
    return metrics, logits, labels


def _calibrate(c: TrainingComponents, val_logits: Any, val_labels: Any) -> dict[str, Any]:
    """Fits the configured calibration on the (noisy) validation split."""
    method, multi = c.config.eval.calibration, c.config.data.multi_label
    out: dict[str, Any] = {"method": method, "temperature": 1.0, "threshold": None, "fitted_on": "validation"}
    if method in ("temperature", "prior"):
        out["temperature"] = fit_temperature(val_logits, val_labels, multi_label=multi)
    if method == "prior":
        if multi or c.num_outputs < 3:
            raise ConfigError("eval.calibration 'prior' applies to single-label tasks with 3 or more classes.")
        out["class_bias"], out["prior_strength"] = choose_class_bias(
            val_logits, val_labels.numpy(), temperature=out["temperature"]
        )
    elif method == "threshold":
        if multi or c.num_outputs > 2:
            raise ConfigError("eval.calibration 'threshold' applies to binary tasks only; use 'temperature'.")
        probs, _ = apply_calibration(val_logits)
        out["threshold"] = choose_threshold(probs[:, 1], val_labels.numpy())
    return out


def _evaluate(c: TrainingComponents, run_dir: RunDir) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results, calibration)`` of the best model (when one was saved) and the final one."""
    results: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    final_state = {k: v.detach().clone() for k, v in c.network.state_dict().items()}
    for which in ("best", "final"):
        if which == "best":
            if not run_dir.best_model.is_file():
                continue
            c.network.load_state_dict(read_model_file(run_dir.best_model)["network"])
        else:
            c.network.load_state_dict(final_state)
        val_metrics, val_logits, val_labels = _split_metrics(c, c.data.val_loader)
        cal = _calibrate(c, val_logits, val_labels)
        entry: dict[str, Any] = {"validation": val_metrics}
        if c.data.test_loader is not None:
            entry["test"] = _split_metrics(c, c.data.test_loader)[0]
            if cal["method"] != "none":
                entry["test_calibrated"] = _split_metrics(c, c.data.test_loader, cal)[0]
        results[which] = entry
        calibration[which] = cal
    return results, calibration


def _curation_file(path: str | None) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of a ``--exclude`` / ``--relabel`` CSV (a reader's decision file or a typed
    list), so a run names the exact decisions it trained on; ``sha256`` is ``None`` when the file is gone."""
    if not path:
        return None
    p = Path(path)
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return {"path": str(p.absolute()), "sha256": digest}


def finish_run(c: TrainingComponents, run_dir: RunDir, t0: float, resumed_from: int) -> dict[str, Any]:
    """Writes the final model and ``summary.json`` of a trained run (rank 0 only).

    Args:
        c: the run's components, trained, with their handlers (``c.handlers["validation"]``).
        run_dir: the run folder.
        t0: when the run started (``time.time()``).
        resumed_from: the iteration the run resumed from (0 for a fresh run).

    Returns:
        The summary: run folder, preset, network, device, counts, the best epoch, LiLAW's scalars and
        meta steps, calibration, the final and best models' metrics, checkpoint paths, and the
        ``--exclude`` / ``--relabel`` files the datalist went through (``curation``: path and sha256).
    """
    cfg = c.config
    meta = checkpoint_meta(cfg, c.shape, c.datalist.class_names)
    atomic_save_torch(
        {"network": {k: v.detach().cpu() for k, v in c.network.state_dict().items()}, "epoch": c.trainer.state.epoch, **meta},
        run_dir.final_model,
    )
    results, calibration = _evaluate(c, run_dir)
    validation: EpochValidation = c.handlers["validation"]
    handler = c.lilaw_handler
    summary = {
        "run_dir": str(run_dir.root),
        "preset": cfg.data.preset,
        "network": cfg.model.network,
        "lilaw_enabled": cfg.lilaw.enabled,
        "device": str(c.device),
        "amp": c.amp,
        "epochs": c.trainer.state.epoch,
        "iterations": c.trainer.state.iteration,
        "resumed_from_iteration": resumed_from,
        "seconds": round(time.time() - t0, 2),
        "num_items": {split: len(c.datalist.split(split)) for split in ("training", "validation", "test")},
        "class_names": meta["class_names"],
        "key_metric": cfg.eval.key_metric,
        "best_epoch": validation.best_epoch,
        "best_val_metric": validation.best_metric,
        "lilaw": {**c.loss.weighting.as_dict(), "meta_steps": handler.steps if handler else 0,
                  "skipped_meta_steps": handler.skipped_steps if handler else 0},
        "calibration": calibration,
        "final": results.get("final", {}),
        "best": results.get("best", {}),
        "checkpoints": {
            "best": str(run_dir.best_model) if run_dir.best_model.is_file() else None,
            "final": str(run_dir.final_model),
        },
        "rejected_items": str(run_dir.rejected) if run_dir.rejected.is_file() else None,
        "curation": {"exclude": _curation_file(cfg.data.exclude), "relabel": _curation_file(cfg.data.relabel)},
    }
    run_dir.write_json(RunDir.SUMMARY, summary)
    return summary
