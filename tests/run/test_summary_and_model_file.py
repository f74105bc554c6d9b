"""The run layer's one rule for which model file and which calibration go together (best, else final)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lilaw_med.run.model_file import model_file, read_model_file
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.summary import NO_CALIBRATION, RunSummary

BEST = {"method": "temperature", "temperature": 1.7, "threshold": None}
FINAL = {"method": "temperature", "temperature": 0.9, "threshold": None}


def _run(tmp_path: Path, best: bool) -> RunDir:
    rd = RunDir(tmp_path / "run")
    (rd.root / RunDir.CHECKPOINTS).mkdir(parents=True)
    meta = {"network_name": "small_cnn", "spatial_dims": 2, "in_channels": 1, "num_outputs": 2}
    torch.save({"network": {"w": torch.zeros(1)}, **meta, "epoch": 5}, rd.final_model)
    summary = {"final": {"test": {"auroc": 0.7}}, "calibration": {"final": FINAL}}
    if best:
        torch.save({"network": {"w": torch.ones(1)}, **meta, "epoch": 3}, rd.best_model)
        summary["best"], summary["calibration"]["best"] = {"test": {"auroc": 0.8}}, BEST
    rd.summary.write_text(json.dumps(summary))
    return rd


def test_the_best_model_goes_with_the_best_calibration_and_metrics(tmp_path):
    rd = _run(tmp_path, best=True)
    summary = RunSummary.read(rd.root)
    assert model_file(rd.root) == rd.best_model and model_file(rd.root, "final") == rd.final_model
    assert read_model_file(model_file(rd.root))["epoch"] == 3
    assert summary.calibration("best") == BEST and summary.calibration("final") == FINAL
    assert summary.results("best")["test"]["auroc"] == 0.8 and summary.results("final")["test"]["auroc"] == 0.7


def test_without_a_best_model_best_means_the_final_model_and_its_calibration(tmp_path):
    rd = _run(tmp_path, best=False)
    summary = RunSummary.read(rd.root)
    assert model_file(rd.root, "best") == rd.final_model
    assert summary.calibration("best") == FINAL and summary.results("best")["test"]["auroc"] == 0.7


def test_a_run_without_summary_has_no_calibration_and_unknown_models_are_refused(tmp_path):
    assert RunSummary.read(tmp_path).calibration("best") == NO_CALIBRATION
    with pytest.raises(ValueError, match="'best' or 'final'"):
        RunSummary().calibration("last")
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        model_file(tmp_path)
