"""The audit read one epoch at a time and written in chunks gives what the in-memory computation gives:
the same window probabilities, scores, counts and flags, and the same CSV as one row dict per item."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks.scale_audit import write_synthetic_run
from lilaw_med.audit import report
from lilaw_med.audit.core import AuditOptions, RunRecord, audit_split, count_scoring_window, scoring_window
from lilaw_med.audit.counts import estimate_noise, find_label_issues
from lilaw_med.audit.rank import get_label_quality_scores
from lilaw_med.workflows.audit import run_audit


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("scale") / "run", 800, epochs=8, num_classes=4, seed=5)


def _in_memory(record: RunRecord, split: str, options: AuditOptions) -> dict:
    """The reference: every field stacked (E, N, C) in memory, averaged with np.nanmean in float64."""
    dyn = record.dynamics[split]
    d = dyn.as_dict()
    labels = record.labels(dyn.ids)
    w = scoring_window(record, options.window, options)
    cw = count_scoring_window(record, options)
    probs = np.nanmean(d["probs"].astype(np.float64)[w.start:w.stop], axis=0)
    count_probs = np.nanmean(d["probs"].astype(np.float64)[cw.start:cw.stop], axis=0)
    scores = get_label_quality_scores(labels, probs, method=options.method)
    noise = estimate_noise(labels, count_probs, n_bootstrap=0)
    flags, thresholds = find_label_issues(scores, labels, noise.n_wrong)
    terms = {k: np.nanmean(d[k].astype(np.float64)[w.start:w.stop], axis=0) for k in ("w_alpha", "weight")}
    return {"probs": probs, "scores": scores, "noise": noise, "flags": flags, "thresholds": thresholds,
            "terms": terms, "seen": (d["count"] > 0).sum(axis=0)}


@pytest.mark.parametrize("split", ["training", "validation"])
def test_the_streamed_audit_equals_the_in_memory_computation(synthetic_run, split):
    record = RunRecord.read(synthetic_run)
    options = AuditOptions()
    ref = _in_memory(record, split, options)
    a = audit_split(record, split, options)
    np.testing.assert_array_equal(a.window_probs, ref["probs"])
    np.testing.assert_allclose(a.scores, ref["scores"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.noise.per_class, ref["noise"].per_class, atol=1e-12)
    np.testing.assert_array_equal(a.noise.n_wrong, ref["noise"].n_wrong)
    np.testing.assert_array_equal(a.is_label_issue, ref["flags"])
    np.testing.assert_array_equal(a.thresholds, ref["thresholds"])
    for k, v in ref["terms"].items():
        np.testing.assert_array_equal(a.terms[k], v)
    np.testing.assert_array_equal(a.epochs_seen, ref["seen"])
    assert a.is_label_issue.sum() >= len(a.ids) // 10  # the synthetic run has wrong labels to find


def test_the_chunked_csv_equals_the_rows_written_at_once_and_the_json_holds_no_rows(synthetic_run, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setattr(report, "CSV_CHUNK", 97)  # several chunks, the last one short
    result = run_audit(synthetic_run, tmp_path / "audit", thumbnails=False, final_model_baseline=False)
    assert result.files["audit.csv"].read_text() == report.csv_text(result.rows)
    with result.files["audit.csv"].open(newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 880
    assert set(json.loads(result.files["audit.json"].read_text())) == {"summary"}


def test_the_suffixes_the_audit_skips_are_exactly_the_readers_non_dicom_ones():
    from lilaw_med.data.readers import NIFTI_SUFFIXES, NUMPY_SUFFIXES, PIL_SUFFIXES

    assert set(report.NOT_DICOM_SUFFIXES) == set(NIFTI_SUFFIXES + NUMPY_SUFFIXES + PIL_SUFFIXES)
