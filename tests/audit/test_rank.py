"""Label quality scores (lilaw_med.audit.rank) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lilaw_med.audit.rank import (
    SCORE_METHODS,
    check_inputs,
    confident_thresholds,
    get_label_quality_scores,
    normalized_margin,
    order_label_issues,
    posterior,
    self_confidence,
    subtract_confident_thresholds,
)

# four items, three classes
LABELS = np.array([0, 1, 2, 1])
PROBS = np.array([
    [0.7, 0.2, 0.1],  # given 0, agrees
    [0.6, 0.3, 0.1],  # given 1, the model prefers 0
    [0.2, 0.3, 0.5],  # given 2, agrees weakly
    [0.1, 0.8, 0.1],  # given 1, agrees
])


def test_self_confidence_is_the_probability_of_the_given_label():
    # p[i, y_i]: 0.7, 0.3, 0.5, 0.8
    np.testing.assert_allclose(self_confidence(LABELS, PROBS), [0.7, 0.3, 0.5, 0.8])


def test_normalized_margin_is_half_the_lead_of_the_given_label_shifted_to_zero_one():
    # (p[y] - max_{k != y} p[k] + 1) / 2:
    # item 0: (0.7 - 0.2 + 1) / 2 = 0.75;  item 1: (0.3 - 0.6 + 1) / 2 = 0.35
    # item 2: (0.5 - 0.3 + 1) / 2 = 0.60;  item 3: (0.8 - 0.1 + 1) / 2 = 0.85
    np.testing.assert_allclose(normalized_margin(LABELS, PROBS), [0.75, 0.35, 0.60, 0.85])


def test_normalized_margin_of_a_tie_is_one_half_and_never_compares_the_label_with_itself():
    # given 0 with [0.5, 0.5]: (0.5 - 0.5 + 1) / 2 = 0.5; given 0 with [1, 0]: (1 - 0 + 1) / 2 = 1
    np.testing.assert_allclose(normalized_margin(np.array([0, 0]), np.array([[0.5, 0.5], [1.0, 0.0]])), [0.5, 1.0])


def test_score_methods_table_names_both_scores():
    assert SCORE_METHODS["self_confidence"] is self_confidence
    assert SCORE_METHODS["normalized_margin"] is normalized_margin
    np.testing.assert_allclose(get_label_quality_scores(LABELS, PROBS, method="normalized_margin"),
                               [0.75, 0.35, 0.60, 0.85])


def test_confident_threshold_is_the_mean_probability_of_a_class_over_its_labelled_items():
    # t0 = mean p[:,0] over items given 0 = 0.7
    # t1 = mean p[:,1] over items given 1 (items 1, 3) = (0.3 + 0.8) / 2 = 0.55
    # t2 = mean p[:,2] over items given 2 = 0.5
    np.testing.assert_allclose(confident_thresholds(LABELS, PROBS), [0.7, 0.55, 0.5])


def test_confident_threshold_of_a_class_nobody_is_given_is_one_and_nan_rows_are_ignored():
    probs = np.array([[0.9, 0.05, 0.05], [np.nan, np.nan, np.nan], [0.5, 0.25, 0.25]])
    # class 0: items 0 and 2 (item 1 is NaN and left out): (0.9 + 0.5) / 2 = 0.7; classes 1, 2: no item -> 1.0
    np.testing.assert_allclose(confident_thresholds(np.array([0, 0, 0]), probs), [0.7, 1.0, 1.0])


def test_subtracting_the_confident_thresholds_gives_hand_values_and_rows_summing_to_one():
    # t = [0.7, 0.55, 0.5], max t = 0.7; adj = p - t + 0.7, then each row divided by its sum:
    # item 0: [0.7, 0.35, 0.3] / 1.35;  item 1: [0.6, 0.45, 0.3] / 1.35
    # item 2: [0.2, 0.45, 0.7] / 1.35;  item 3: [0.1, 0.95, 0.3] / 1.35
    expected = np.array([[0.7, 0.35, 0.3], [0.6, 0.45, 0.3], [0.2, 0.45, 0.7], [0.1, 0.95, 0.3]]) / 1.35
    adj = subtract_confident_thresholds(LABELS, PROBS)
    np.testing.assert_allclose(adj, expected)
    np.testing.assert_allclose(adj.sum(axis=1), 1.0)
    assert (adj >= 0).all()


def test_adjusted_scores_read_the_adjusted_probabilities():
    # self-confidence after adjustment: 0.7/1.35, 0.45/1.35, 0.7/1.35, 0.95/1.35
    scores = get_label_quality_scores(LABELS, PROBS, adjust_pred_probs=True)
    np.testing.assert_allclose(scores, np.array([0.7, 0.45, 0.7, 0.95]) / 1.35)
    # item 1 stays the most suspicious; item 2 (p[y] 0.5, but its class's typical probability is 0.5 too)
    # climbs from second (0.5 < 0.7) to level with item 0 (both 0.7 / 1.35)
    order = order_label_issues(scores).tolist()
    assert order[0] == 1 and order[-1] == 3 and scores[2] == pytest.approx(scores[0])


def test_nan_rows_stay_nan_and_do_not_shift_the_other_items():
    probs = np.vstack([PROBS, [np.nan, np.nan, np.nan]])
    labels = np.append(LABELS, 0)
    adj = subtract_confident_thresholds(labels, probs)
    assert np.isnan(adj[4]).all()
    np.testing.assert_allclose(adj[:4], subtract_confident_thresholds(LABELS, PROBS))  # thresholds ignore the NaN row
    for method in SCORE_METHODS:
        for adjust in (False, True):
            s = get_label_quality_scores(labels, probs, method=method, adjust_pred_probs=adjust)
            assert np.isnan(s[4]) and np.isfinite(s[:4]).all(), (method, adjust)


def test_scores_are_clipped_to_zero_one():
    # probabilities a little outside [0, 1] (float error of an average) still give scores in [0, 1]
    s = get_label_quality_scores(np.array([0, 1]), np.array([[1.0000001, -1e-7], [1.0000001, -1e-7]]))
    np.testing.assert_array_equal(s, [1.0, 0.0])


def test_an_unknown_method_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"method must be one of \['normalized_margin', 'posterior', 'self_confidence'\] but is 'bogus'"):
        get_label_quality_scores(LABELS, PROBS, method="bogus")


@pytest.mark.parametrize(("labels", "probs", "message"), [
    (LABELS, PROBS[0], r"labels must be \(N,\) and pred_probs \(N, C\) but are \(4,\) and \(3,\)"),
    (LABELS[:3], PROBS, r"labels must be \(N,\) and pred_probs \(N, C\) but are \(3,\) and \(4, 3\)"),
    (LABELS[:, None], PROBS, r"labels must be \(N,\)"),
    (np.array([0, 1, 3, 1]), PROBS, r"labels must lie in \[0, 2\] but range over \[0, 3\]"),
    (np.array([0, -1, 2, 1]), PROBS, r"labels must lie in \[0, 2\] but range over \[-1, 2\]"),
    (np.array([0.0, 1.0, 2.0, 1.0]), PROBS, "labels must be integer class indices but have dtype float64"),
])
def test_malformed_inputs_are_value_errors_that_say_what_is_wrong(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        check_inputs(labels, probs)
    with pytest.raises(ValueError, match=message):
        get_label_quality_scores(labels, probs)


def test_order_label_issues_puts_the_lowest_first_ties_in_order_and_nan_last():
    q = np.array([0.5, np.nan, 0.1, 0.3, 0.1, np.nan])
    # 0.1 (item 2), 0.1 (item 4, after 2: stable), 0.3, 0.5, then the NaNs in their order
    assert order_label_issues(q).tolist() == [2, 4, 3, 0, 1, 5]
    assert order_label_issues(np.array([])).tolist() == []


def test_posterior_by_hand():
    # thresholds (0.7, 0.55, 0.5); confident classes 0, none, 2, 1; calibrated joint diag(1, 2, 1);
    # plus 1 per cell, over column sums (4, 5, 4): P(given = i | true = j) =
    # [[0.5, 0.2, 0.25], [0.25, 0.6, 0.25], [0.25, 0.2, 0.5]]
    # item 0: 0.7 * 0.5 / (0.7 * 0.5 + 0.2 * 0.2 + 0.1 * 0.25) = 0.35 / 0.415
    # item 1: 0.3 * 0.6 / (0.6 * 0.25 + 0.3 * 0.6 + 0.1 * 0.25) = 0.18 / 0.355
    # item 2: 0.5 * 0.5 / (0.2 * 0.25 + 0.3 * 0.2 + 0.5 * 0.5) = 0.25 / 0.36
    # item 3: 0.8 * 0.6 / (0.1 * 0.25 + 0.8 * 0.6 + 0.1 * 0.25) = 0.48 / 0.53
    expected = [0.35 / 0.415, 0.18 / 0.355, 0.25 / 0.36, 0.48 / 0.53]
    np.testing.assert_allclose(posterior(LABELS, PROBS), expected, rtol=1e-12)
    np.testing.assert_allclose(get_label_quality_scores(LABELS, PROBS, method="posterior"), expected, rtol=1e-12)


def test_posterior_scores_an_item_the_systematic_flip_explains_below_one_it_does_not():
    # ten items of class 0 flipped to label 1 (the network is sure they are 0): the joint's C[1, 0]
    # is large, C[1, 2] is not; two probes labelled 1 with the same p[1] = 0.55, one leaning to 0
    # and one to 2: self-confidence ties them, the posterior puts the one the flip explains first
    rows = ([[0.9, 0.1, 0.0]] * 10 + [[0.9, 0.1, 0.0]] * 10 + [[0.05, 0.9, 0.05]] * 10
            + [[0.05, 0.05, 0.9]] * 10 + [[0.4, 0.55, 0.05], [0.05, 0.55, 0.4]])
    labels = np.array([0] * 10 + [1] * 10 + [1] * 10 + [2] * 10 + [1, 1])
    probs = np.array(rows)
    sc, post = self_confidence(labels, probs), posterior(labels, probs)
    assert sc[-2] == sc[-1]
    assert post[-2] < post[-1] - 0.1
    # the flipped items themselves rank below every correctly labelled item of class 1
    assert post[10:20].max() < post[20:30].min()
