"""The confident joint, the noise estimate with its bootstrap interval, and per-class pruning
(lilaw_med.audit.counts), against matrices computed by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lilaw_med.audit.counts import confident_joint, estimate_noise, find_label_issues

# Three classes, nine items. Thresholds (mean probability of a class over the items given it):
#   t0 = (0.8 + 0.6 + 0.1 + 0.4) / 4 = 0.475,  t1 = (0.7 + 0.6 + 0.2) / 3 = 0.5,  t2 = (0.8 + 0.6) / 2 = 0.7
LABELS3 = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
PROBS3 = np.array([
    [0.8, 0.1, 0.1],  # a: p0 0.8 >= t0              -> (0, 0)
    [0.6, 0.3, 0.1],  # b: p0 0.6 >= t0              -> (0, 0)
    [0.1, 0.8, 0.1],  # c: p1 0.8 >= t1, p0 below    -> (0, 1): a wrong label
    [0.4, 0.3, 0.3],  # d: 0.4 < t0, 0.3 < t1, 0.3 < t2: reaches no threshold, not counted
    [0.1, 0.7, 0.2],  # e: p1 0.7 >= t1              -> (1, 1)
    [0.2, 0.6, 0.2],  # f: p1 0.6 >= t1              -> (1, 1)
    [0.2, 0.2, 0.6],  # g: 0.6 < t2 = 0.7, the rest below too: not counted
    [0.1, 0.1, 0.8],  # h: p2 0.8 >= t2              -> (2, 2)
    [0.2, 0.2, 0.6],  # i: not counted
])
# raw joint [[2, 1, 0], [0, 2, 0], [0, 0, 1]]; calibrated: each row scaled to its label count
# (row 0 x 4/3, row 1 x 3/2, row 2 x 2/1): [[8/3, 4/3, 0], [0, 3, 0], [0, 0, 2]], summing to N = 9
RAW3 = np.array([[2, 1, 0], [0, 2, 0], [0, 0, 1]], dtype=float)
CALIBRATED3 = np.array([[8 / 3, 4 / 3, 0], [0, 3, 0], [0, 0, 2]])


def test_confident_joint_counts_an_item_only_above_the_class_threshold():
    np.testing.assert_allclose(confident_joint(LABELS3, PROBS3, calibrate=False), RAW3)


def test_calibrated_confident_joint_rescales_each_row_to_the_label_count():
    joint = confident_joint(LABELS3, PROBS3)
    np.testing.assert_allclose(joint, CALIBRATED3)
    np.testing.assert_allclose(joint.sum(axis=1), [4, 3, 2])
    assert joint.sum() == pytest.approx(9)


def test_nan_rows_are_left_out_of_the_joint_and_of_the_label_counts():
    labels = np.append(LABELS3, [0, 1])
    probs = np.vstack([PROBS3, np.full((2, 3), np.nan)])
    np.testing.assert_allclose(confident_joint(labels, probs), CALIBRATED3)


def test_of_two_classes_above_threshold_the_more_probable_is_the_confident_one():
    # given 0: A [0.2, 0.8], B [0.6, 0.4], X [0.45, 0.55]; given 1: C [0.7, 0.3], D [0.3, 0.7]
    # t0 = (0.2 + 0.6 + 0.45) / 3 = 0.4167, t1 = (0.3 + 0.7) / 2 = 0.5
    # A: only p1 0.8 >= t1 -> (0, 1);  B: only p0 0.6 >= t0 -> (0, 0)
    # X: p0 0.45 >= t0 AND p1 0.55 >= t1 -> the more probable, 1 -> (0, 1)
    # C: only p0 0.7 >= t0 -> (1, 0);  D: only p1 0.7 >= t1 -> (1, 1)
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.45, 0.55], [0.7, 0.3], [0.3, 0.7]])
    np.testing.assert_allclose(confident_joint(labels, probs, calibrate=False), [[1, 2], [1, 1]])


def test_a_most_probable_class_below_its_threshold_is_not_the_confident_one():
    # given 0: A [0.45, 0, 0.55], B [0.35, 0, 0.65]; given 1: E [0, 1, 0]; given 2: C [0, 0, 1], D [0.05, 0, 0.95]
    # t0 = 0.4, t1 = 1.0, t2 = 0.975
    # A: argmax is 2 but 0.55 < t2; p0 0.45 >= t0 -> (0, 0).  B: 0.35 < t0, 0.65 < t2: not counted
    # E -> (1, 1);  C: 1.0 >= t2 -> (2, 2);  D: 0.95 < t2, 0.05 < t0: not counted
    labels = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.45, 0, 0.55], [0.35, 0, 0.65], [0, 1, 0], [0, 0, 1], [0.05, 0, 0.95]])
    np.testing.assert_allclose(confident_joint(labels, probs, calibrate=False), np.diag([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(confident_joint(labels, probs), np.diag([2.0, 1.0, 2.0]))


def test_estimate_noise_point_estimate_is_the_off_diagonal_share_of_the_calibrated_joint():
    est = estimate_noise(LABELS3, PROBS3, n_bootstrap=0)
    # per class: 1 - diag / row = 1 - (8/3) / 4 = 1/3, 1 - 3/3 = 0, 1 - 2/2 = 0
    np.testing.assert_allclose(est.per_class, [1 / 3, 0, 0])
    # overall: sum(rate_k * n_k) / N = (1/3 * 4) / 9 = 4/27
    assert est.overall == pytest.approx(4 / 27)
    np.testing.assert_array_equal(est.counts, [4, 3, 2])
    np.testing.assert_array_equal(est.n_wrong, [1, 0, 0])  # rint(1/3 * 4) = rint(1.33)
    # without resamples the interval is the point estimate
    np.testing.assert_allclose(est.per_class_interval, [[1 / 3, 1 / 3], [0, 0], [0, 0]])
    assert est.overall_interval == pytest.approx((4 / 27, 4 / 27))


def _binary_noisy(copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: 16 correct [0.9, 0.1] and 4 wrong [0.1, 0.9]; class 1: 27 correct [0.2, 0.8] and
    3 wrong [0.85, 0.15]. t0 = (16*0.9 + 4*0.1)/20 = 0.74, t1 = (27*0.8 + 3*0.15)/30 = 0.735:
    every item is counted in its own cell, joint [[16, 4], [3, 27]], rates 4/20 = 0.2 and 3/30 = 0.1,
    overall 7/50 = 0.14 (the same for any number of copies of the set)."""
    labels = np.array([0] * 20 + [1] * 30)
    probs = np.array([[0.9, 0.1]] * 16 + [[0.1, 0.9]] * 4 + [[0.2, 0.8]] * 27 + [[0.85, 0.15]] * 3)
    return np.tile(labels, copies), np.tile(probs, (copies, 1))


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic_for_a_seed():
    labels, probs = _binary_noisy()
    est = estimate_noise(labels, probs, n_bootstrap=200, seed=3)
    np.testing.assert_allclose(est.per_class, [0.2, 0.1])
    assert est.overall == pytest.approx(0.14) and est.confidence == 0.95
    lo, hi = est.per_class_interval[:, 0], est.per_class_interval[:, 1]
    assert (lo <= est.per_class).all() and (est.per_class <= hi).all() and (lo < hi).all()
    assert est.overall_interval[0] <= est.overall <= est.overall_interval[1]
    again = estimate_noise(labels, probs, n_bootstrap=200, seed=3)
    np.testing.assert_array_equal(again.per_class_interval, est.per_class_interval)
    assert again.overall_interval == est.overall_interval
    other = estimate_noise(labels, probs, n_bootstrap=200, seed=4)
    np.testing.assert_array_equal(other.per_class, est.per_class)  # the point estimate takes no randomness
    assert not np.array_equal(other.per_class_interval, est.per_class_interval)


def test_bootstrap_interval_narrows_with_more_items():
    small = estimate_noise(*_binary_noisy(1), n_bootstrap=200, seed=0)
    large = estimate_noise(*_binary_noisy(16), n_bootstrap=200, seed=0)
    np.testing.assert_allclose(large.per_class, small.per_class)  # same shares, 16 times the items
    width = lambda e: e.per_class_interval[:, 1] - e.per_class_interval[:, 0]  # noqa: E731
    # a binomial share's spread shrinks like 1/sqrt(n): about 4 times narrower; ask for 2
    assert (width(large) < width(small) / 2).all()
    assert np.diff(large.overall_interval)[0] < np.diff(small.overall_interval)[0] / 2


def test_a_narrower_confidence_gives_a_narrower_interval():
    labels, probs = _binary_noisy()
    wide = estimate_noise(labels, probs, confidence=0.95, seed=0)
    narrow = estimate_noise(labels, probs, confidence=0.5, seed=0)
    assert (narrow.per_class_interval[:, 0] >= wide.per_class_interval[:, 0]).all()
    assert (narrow.per_class_interval[:, 1] <= wide.per_class_interval[:, 1]).all()


def test_find_label_issues_flags_exactly_n_per_class_lowest_per_class_and_reports_thresholds():
    q = np.array([0.1, 0.5, 0.3, np.nan, 0.2, 0.9, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    # class 0 (items 0-3; item 3 has no score): the 2 lowest are item 0 (0.1) and item 2 (0.3): threshold 0.3
    # class 1 (items 4-6): the lowest is item 4 (0.2): threshold 0.2
    flags, thresholds = find_label_issues(q, labels, [2, 1])
    assert np.nonzero(flags)[0].tolist() == [0, 2, 4]
    np.testing.assert_allclose(thresholds, [0.3, 0.2])


def test_find_label_issues_never_flags_more_than_a_class_holds_nor_a_nan_item():
    q = np.array([0.1, 0.5, 0.3, np.nan, 0.2, 0.9, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    flags, thresholds = find_label_issues(q, labels, [10, 0])
    assert np.nonzero(flags)[0].tolist() == [0, 1, 2]  # the three scored items of class 0, not the NaN one
    assert thresholds[0] == pytest.approx(0.5) and np.isnan(thresholds[1])
    flags, thresholds = find_label_issues(q, labels, [-3, 1])
    assert np.nonzero(flags)[0].tolist() == [4] and np.isnan(thresholds[0])


def test_find_label_issues_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"label_quality and labels must both be \(N,\) but are \(3,\) and \(2,\)"):
        find_label_issues(np.zeros(3), np.zeros(2, dtype=int), [1])


def test_a_class_with_no_items_counts_nothing_and_flags_nothing():
    # classes 0 and 2 only; t0 = (0.9 + 0.05) / 2 = 0.475, t1 = 1.0 (no item), t2 = (0.9 + 0.8) / 2 = 0.85
    # item 0 [0.9, .05, .05] -> (0, 0); item 1 [.05, .05, 0.9] given 0: 0.9 >= t2 -> (0, 2)
    # item 2 [.05, .05, 0.9] -> (2, 2); item 3 [0.1, 0.1, 0.8]: 0.8 < t2, 0.1 < t0: not counted
    labels = np.array([0, 0, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9], [0.05, 0.05, 0.9], [0.1, 0.1, 0.8]])
    # raw [[1, 0, 1], [0, 0, 0], [0, 0, 1]]; calibrated: row 0 x 2/2, row 2 x 2/1
    np.testing.assert_allclose(confident_joint(labels, probs), [[1, 0, 1], [0, 0, 0], [0, 0, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice" RuntimeWarning for the empty class
        est = estimate_noise(labels, probs, n_bootstrap=50)
    np.testing.assert_allclose(est.per_class, [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(est.counts, [2, 0, 2])
    np.testing.assert_array_equal(est.n_wrong, [1, 0, 0])
    np.testing.assert_allclose(est.per_class_interval[1], [0.0, 0.0])  # no resample holds class 1
    assert est.overall == pytest.approx(0.25)  # (0.5 * 2) / 4
    flags, thresholds = find_label_issues(np.array([0.9, 0.05, 0.9, 0.8]), labels, [1, 5, 1])
    assert np.nonzero(flags)[0].tolist() == [1, 3] and np.isnan(thresholds[1])


def test_thresholds_passed_in_replace_the_items_own():
    # with t = (0.3, 0.3, 0.3) every item reaches a threshold and its confident class is its argmax:
    # given 0: a -> 0, b -> 0, c -> 1, d -> 0;  given 1: e -> 1, f -> 1, g -> 2;  given 2: h -> 2, i -> 2
    # raw [[3, 1, 0], [0, 2, 1], [0, 0, 2]]: off-diagonal shares 1/4, 1/3, 0
    raw = confident_joint(LABELS3, PROBS3, calibrate=False, thresholds=np.full(3, 0.3))
    np.testing.assert_allclose(raw, [[3, 1, 0], [0, 2, 1], [0, 0, 2]])
    est = estimate_noise(LABELS3, PROBS3, n_bootstrap=0, thresholds=np.full(3, 0.3))
    np.testing.assert_allclose(est.per_class, [1 / 4, 1 / 3, 0.0])


# ----------------------------------------------------------------------------- the count bootstrap
def test_the_rates_are_functions_of_the_cell_counts_alone_for_any_resample():
    """With the thresholds held fixed, the rates of any resample of the items computed from the items
    equal those computed from the resample's cell counts: so drawing the counts is drawing the items."""
    from lilaw_med.audit.counts import _cell_counts, _rates_from_cells
    from lilaw_med.audit.rank import confident_thresholds

    t = confident_thresholds(LABELS3, PROBS3)
    # the cells of PROBS3, by hand: [i, j] given i confidently j, [i, 3] no threshold reached
    np.testing.assert_array_equal(_cell_counts(LABELS3, PROBS3), [[2, 1, 0, 1], [0, 2, 0, 1], [0, 0, 1, 1]])
    rng = np.random.default_rng(3)
    for _ in range(20):
        idx = rng.integers(0, LABELS3.size, LABELS3.size)
        joint = confident_joint(LABELS3[idx], PROBS3[idx], thresholds=t)
        rows = joint.sum(axis=1)
        by_items = np.where(rows > 0, 1 - np.diag(joint) / np.maximum(rows, 1e-12), 0.0)
        by_cells, counts = _rates_from_cells(_cell_counts(LABELS3[idx], PROBS3[idx], t))
        np.testing.assert_allclose(by_cells, by_items, atol=1e-12)
        np.testing.assert_array_equal(counts, np.bincount(LABELS3[idx], minlength=3))


def test_the_count_bootstrap_interval_matches_the_item_bootstrap_with_fixed_thresholds():
    rng = np.random.default_rng(0)
    n, c = 3000, 3
    labels = rng.integers(0, c, n)
    probs = rng.dirichlet(np.ones(c), n) * 0.5
    probs[np.arange(n), labels] += 0.5  # the given class leads, except for the noise below
    wrong = rng.random(n) < 0.2
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)
    from lilaw_med.audit.rank import confident_thresholds

    t = confident_thresholds(labels, probs)
    est = estimate_noise(labels, probs, n_bootstrap=4000, seed=1)
    item = []
    for _ in range(1000):  # the item bootstrap, thresholds held at the full data's
        idx = rng.integers(0, n, n)
        item.append(estimate_noise(labels[idx], probs[idx], n_bootstrap=0, thresholds=t).overall)
    lo, hi = np.percentile(item, [2.5, 97.5])
    assert est.overall_interval[0] == pytest.approx(lo, abs=0.004)
    assert est.overall_interval[1] == pytest.approx(hi, abs=0.004)
    assert est.sampling_interval == est.overall_interval


def test_combine_estimates_takes_the_envelope_of_the_windows_intervals_and_keeps_the_point():
    from lilaw_med.audit.counts import NoiseEstimate, combine_estimates

    def est(rate: float, lo: float, hi: float) -> NoiseEstimate:
        return NoiseEstimate(np.array([rate, rate]), np.array([[lo, hi], [lo + 0.01, hi + 0.01]]), rate, (lo, hi),
                             np.array([10.0, 10.0]), 0.95, (lo, hi))

    combined = combine_estimates(est(0.2, 0.15, 0.25), [est(0.1, 0.05, 0.14), est(0.3, 0.26, 0.35)])
    assert combined.overall == 0.2 and combined.overall_interval == (0.05, 0.35)
    np.testing.assert_allclose(combined.per_class_interval, [[0.05, 0.35], [0.06, 0.36]])
    assert combined.sampling_interval == (0.15, 0.25)
    np.testing.assert_array_equal(combined.n_wrong, [2, 2])


def test_wrong_label_chances_follow_the_cells_and_sum_to_the_estimated_counts():
    from lilaw_med.audit.counts import expected_precision, wrong_label_chances

    # PROBS3's cells (see the top of this file): a, b (0, 0) -> 0; c (0, 1) -> 1; d reaches no threshold
    # -> class 0's rate 1/3; e, f (1, 1) -> 0; g no threshold -> class 1's rate 0; h (2, 2) -> 0; i -> 0
    chances = wrong_label_chances(LABELS3, PROBS3)
    np.testing.assert_allclose(chances, [0, 0, 1, 1 / 3, 0, 0, 0, 0, 0])
    est = estimate_noise(LABELS3, PROBS3, n_bootstrap=0)
    np.testing.assert_allclose(np.bincount(LABELS3, weights=chances, minlength=3), est.per_class * est.counts)
    flagged = np.zeros(9, dtype=bool)
    flagged[[2, 3]] = True
    assert expected_precision(chances, flagged) == pytest.approx((1 + 1 / 3) / 2)
    flagged[[0, 4]] = True
    assert expected_precision(chances, flagged) == pytest.approx((1 + 1 / 3) / 4)
    assert np.isnan(expected_precision(chances, np.zeros(9, dtype=bool)))
