"""A review budget flags exactly that many items; the noise rate is reported as not identifiable (with a
wide interval) where one run cannot tell; the CLI passes --review, --count-window and --fold-checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lilaw_med.audit.core import AuditOptions, not_identifiable_reasons, review_budget
from lilaw_med.audit.counts import NoiseEstimate
from lilaw_med.audit.record import RunRecord
from lilaw_med.cli import main
from lilaw_med.workflows.audit import run_audit
from tests.audit.conftest import N_TRAIN, N_VAL, make_run_folder, wrong_ids


def _audit(run, **kw):
    return run_audit(run, thumbnails=False, final_model_baseline=False, **kw)


def test_review_budget_is_a_count_or_a_share_of_the_split():
    assert review_budget(3, 16) == 3 and review_budget(50, 16) == 16
    assert review_budget(0.25, 16) == 4 and review_budget(0.05, 1000) == 50
    with pytest.raises(ValueError, match="review must be"):
        AuditOptions(review=2.5)
    with pytest.raises(ValueError, match="give one"):
        AuditOptions(review=3, noise_rate=0.1)


def test_a_review_budget_flags_the_lowest_ranked_items_of_each_split(run_folder):
    result = _audit(run_folder, review=3)
    train = result.splits["training"]
    assert train.flag_rule == "review" and int(train.is_label_issue.sum()) == 3
    # the three wrong labels rank lowest in the scoring window (tests/audit/conftest.py)
    assert {i for i, f in zip(train.ids, train.is_label_issue, strict=True) if f} == wrong_ids()
    assert int(result.splits["validation"].is_label_issue.sum()) == 3
    info = result.summary["splits"]["training"]
    assert info["review_budget"] == 3 and info["flag_rule"] == "review" and 0 < info["expected_precision"] <= 1
    share = _audit(run_folder, review=0.5)
    assert int(share.splits["training"].is_label_issue.sum()) == N_TRAIN // 2
    assert int(share.splits["validation"].is_label_issue.sum()) == N_VAL // 2


def test_the_fixture_run_says_why_neither_rate_is_identifiable(run_folder):
    # training: estimate 3/16 = 0.1875; the network's own error (1 - 0.1875) - 0.75 = 0.06 is below 0.10, but
    # 16 items and the count windows leave a 95% interval [0, 0.4375], wider than 0.20
    # validation: estimate 0 of 4 items; error (1 - 0) - 0.75 = 0.25 exceeds 0.10 and the estimate
    # both are widened to [0, max(upper end, the share the network's most probable class disagrees with)]
    result = _audit(run_folder)
    train, val = result.summary["splits"]["training"], result.summary["splits"]["validation"]
    assert not train["identifiable"] and len(train["not_identifiable_because"]) == 1
    assert train["not_identifiable_because"][0].startswith("the count windows' and the bootstrap's 95% interval [0.00, 0.44] is wider than 0.20")
    assert train["estimated_noise_rate_interval"][0] == 0.0 and train["estimated_noise_rate_interval"][1] >= 0.4375
    assert not val["identifiable"] and "own error on the validation items (about 0.25" in val["not_identifiable_because"][0]
    assert val["estimated_noise_rate_interval"][0] == 0.0


def test_a_count_is_identifiable_only_within_an_interval_no_wider_than_0_20():
    from lilaw_med.audit.core import IDENTIFIABLE_WIDTH, _width_reasons

    assert IDENTIFIABLE_WIDTH == 0.20
    assert _width_reasons((0.20, 0.40)) == [] and _width_reasons((0.25, 0.30)) == []
    (reason,) = _width_reasons((0.20, 0.41))
    assert reason.startswith("the count windows' and the bootstrap's 95% interval [0.20, 0.41] is wider than 0.20")


def test_a_network_still_learning_gives_a_wide_interval_and_says_why(tmp_path):
    learning = make_run_folder(tmp_path, metrics_val_loss=(0.6, 0.5, 0.4))  # best at the last epoch
    result = _audit(learning)
    info = result.summary["splits"]["training"]
    assert not info["identifiable"]
    assert any("still learning" in r for r in info["not_identifiable_because"])
    lo, hi = info["estimated_noise_rate_interval"]
    assert lo == 0.0 and hi >= info["estimated_noise_rate_sampling_interval"][1]
    assert any("not identifiable" in w for w in info["warnings"])
    assert "not identifiable from this run" in (learning / "audit" / "report.html").read_text()


def test_agreement_with_labels_counts_the_items_with_probabilities():
    from lilaw_med.audit.core import _agreement_with_labels

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [np.nan, np.nan]])
    # most probable 0, 1, 0 against labels 0, 1, 1 (the NaN row is left out); classes 2 and 2 of 4
    assert _agreement_with_labels(probs, np.array([0, 1, 1, 0])) == pytest.approx((2 / 3, 0.5))
    assert _agreement_with_labels(np.full((2, 2), np.nan), np.array([0, 1])) is None


def _estimate(rate: float) -> NoiseEstimate:
    return NoiseEstimate(np.array([rate, rate]), np.array([[rate, rate], [rate, rate]]), rate, (rate, rate),
                         np.array([8.0, 8.0]), 0.95)


@pytest.mark.parametrize(("above", "called"), [(0.01, True), (0.03, False)])
def test_a_network_no_better_than_the_largest_class_is_not_identifiable(run_folder, above, called):
    # the fixture's 4 validation items are labelled 0, 1, 0, 1: the largest class holds 0.5 of them; an
    # estimate of 0.3 keeps the own-error rule quiet ((1 - 0.3) - 0.51 = 0.19 < 0.3)
    record = RunRecord.read(run_folder)
    record = replace(record, val_accuracy=np.full_like(record.val_accuracy, 0.5 + above))
    reasons = not_identifiable_reasons(record, AuditOptions(), _estimate(0.3))
    assert any("never predicted the validation labels better than always answering the largest class "
               f"(best noisy validation accuracy {0.5 + above:.3f} vs 0.500)" in r for r in reasons) == called


@pytest.mark.parametrize(("agreeing", "called"), [(9, True), (10, False)])
def test_a_scored_window_no_better_than_the_largest_class_is_not_identifiable(run_folder, agreeing, called):
    # 16 items, 9 of class 0 (largest share 0.5625): 9 agreeing (0.5625) is within 0.02 of it, 10 (0.625) is not
    record = RunRecord.read(run_folder)
    labels = np.array([0] * 9 + [1] * 7)
    probs = np.zeros((16, 2))
    probs[np.arange(16), np.where(np.arange(16) < agreeing, labels, 1 - labels)] = 1.0
    reasons = not_identifiable_reasons(record, AuditOptions(), _estimate(0.3), probs, labels)
    assert any(r.startswith("the network had not learnt") for r in reasons) == called


def test_ordinal_grades_are_never_called_identifiable(run_folder):
    info = _audit(run_folder, ordinal=True).summary["splits"]["training"]
    assert not info["identifiable"] and "ordinal grades" in info["not_identifiable_because"][0]


def test_the_interval_carries_every_candidate_count_windows_interval(run_folder):
    info = _audit(run_folder).summary["splits"]["training"]
    lo, hi = info["estimated_noise_rate_interval"]
    assert len(info["window_estimates"]) >= 2
    for w in info["window_estimates"]:
        assert lo <= w["sampling_interval"][0] and w["sampling_interval"][1] <= hi


def test_the_cli_passes_review_count_window_and_fold_checkpoint(run_folder, capsys):
    code = main(["audit", str(run_folder), "--review", "3", "--count-window", "all", "--no-thumbnails",
                 "--no-final-model-baseline", "--fold-checkpoint", "final"])
    assert code == 0
    out = capsys.readouterr().out
    assert "expected precision of the 3 flagged at the review budget of 3" in out
    summary = json.loads((run_folder / "audit" / "audit.json").read_text())["summary"]
    assert summary["options"]["fold_checkpoint"] == "final" and summary["options"]["review"] == 3
    cw = summary["splits"]["training"]["count_window"]
    assert (cw["first_epoch"], cw["last_epoch"], cw["rule"]) == (1, 3, "all")
