"""The quick start's own audit: the README's training on the bundled sample data, then the shipped
audit. What must hold on any such run, not the figures of one: the shipped score ranks the wrong labels
at least as well as both self-confidence baselines and far better than chance, the flagged items are
mostly wrong labels (far more than a random pick of as many would hold), and the true share of wrong
labels rises from the items called easy to those called hard."""

from __future__ import annotations

import math

import pytest
from scipy.stats import hypergeom

from lilaw_med.run.config import load_preset_config
from lilaw_med.training.run import run_training
from lilaw_med.workflows.audit import run_audit

pytestmark = pytest.mark.slow

SIGNIFICANCE = 1e-3
"""The chance a random ranking (or a random pick of the flagged items) would do as well."""


def test_quick_start_audit_beats_both_self_confidence_baselines_and_its_flags_are_mostly_wrong_labels(tmp_path):
    config = load_preset_config("radiology_2d.yaml")
    config["data"]["sample_dir"] = str(tmp_path / "sample_data")
    config["train"]["progress"] = False
    result = run_training(config, tmp_path / "run")
    audit = run_audit(result.run_dir, thumbnails=False)

    detection = audit.detection
    n, n_wrong = detection["n_items"], detection["n_mislabeled"]
    assert 0 < n_wrong < n
    scores = detection["scores"]
    ours = scores["label_score"]["auroc"]
    assert ours >= scores["final_epoch_self_confidence"]["auroc"]
    assert ours >= scores["final_model_self_confidence"]["auroc"]
    # far from chance: a random ranking's AUROC has mean 1/2 and standard deviation
    # sqrt((n + 1) / (12 n_wrong n_right)) (Mann-Whitney); 3.1 of them leave it a chance under 1e-3
    sd = math.sqrt((n + 1) / (12 * n_wrong * (n - n_wrong)))
    assert ours > 0.5 + 3.1 * sd, (ours, sd)

    flags = detection["is_label_issue"]
    flagged, hits = flags["n_flagged"], round(flags["precision"] * flags["n_flagged"])
    assert flagged > 0 and flags["precision"] > 0.5  # most flagged labels are wrong
    # a random pick of as many items holds this many wrong labels with a chance under 1e-3
    assert hypergeom.sf(hits - 1, n, n_wrong, flagged) < SIGNIFICANCE, (hits, flagged, n_wrong, n)

    levels = detection["difficulty"]
    rates = [levels[lv]["true_mislabel_rate"] for lv in ("easy", "moderate", "hard")]
    assert rates[0] < rates[1] < rates[2]
