"""run_refine: train, audit, exclude, retrain; both runs and the audit in the refine folder.

The training itself is replaced by a stand-in that writes a tiny run folder (the real pipeline is
tested by its own tests); what is tested here is the loop."""

from __future__ import annotations

import json
import shutil

import lilaw_med.training.builder as builder
from lilaw_med.training.config import load_preset_config
from lilaw_med.training.refine import REFINE_RULE, run_refine
from tests.audit.conftest import N_TRAIN, WRONG, make_run_folder


def test_refine_excludes_the_suspected_mislabels_and_retrains(tmp_path, monkeypatch):
    calls = []
    template = make_run_folder(tmp_path / "template")

    class Result:
        def __init__(self, run_dir, summary):
            self.run_dir, self.summary = run_dir, summary

    def fake_run_training(config, output_dir, resume=False, *, device=None, progress=None, datalist=None):
        calls.append(datalist)
        shutil.copytree(template, output_dir)
        return Result(output_dir, {"epochs": 3, "final": {"test": {"auroc": 0.5 + 0.1 * len(calls)}}})

    monkeypatch.setattr(builder, "run_training", fake_run_training)
    config = load_preset_config("radiology_2d.yaml")
    result = run_refine(config, tmp_path / "refine", rule={"noise_rate": len(WRONG) / N_TRAIN})
    root = tmp_path / "refine"
    for name in ("initial/datalist.json", "audit/audit.csv", "audit/report.html", "refined/datalist.json",
                 "refine_exclude.csv", "refine.json"):
        assert (root / name).is_file(), name
    assert calls[0] is None and calls[1] is not None
    kept = {it["id"] for it in calls[1].training}
    assert len(kept) == N_TRAIN - result.n_excluded and result.n_excluded > 0
    assert not kept & {f"img-{i:02d}" for i in WRONG}  # the wrong labels rank lowest and are left out
    summary = json.loads((root / "refine.json").read_text())
    assert summary["rule"]["method"] == REFINE_RULE["method"] and summary["n_excluded"] == result.n_excluded
    assert result.refine == summary and result.summary == {"epochs": 3, "final": {"test": {"auroc": 0.7}}}
    assert summary["refined"]["final"]["test"]["auroc"] > summary["initial"]["final"]["test"]["auroc"]


def test_refine_by_default_excludes_half_of_the_estimated_count(tmp_path, monkeypatch):
    template = make_run_folder(tmp_path / "template")

    class Result:
        def __init__(self, run_dir, summary):
            self.run_dir, self.summary = run_dir, summary

    def fake_run_training(config, output_dir, resume=False, *, device=None, progress=None, datalist=None):
        shutil.copytree(template, output_dir)
        return Result(output_dir, {"epochs": 3})

    monkeypatch.setattr(builder, "run_training", fake_run_training)
    result = run_refine(load_preset_config("radiology_2d.yaml"), tmp_path / "refine")
    per_class = json.loads((tmp_path / "refine" / "audit" / "audit.json").read_text())["summary"]["splits"]["training"]["per_class"]
    expected = sum(round(0.5 * c["estimated_noise_rate"] * c["n_items"]) for c in per_class)
    assert REFINE_RULE["fraction_of_estimate"] == 0.5 and result.n_excluded == expected > 0
