"""Easy / moderate / hard (lilaw_med.audit.difficulty) on hand-made probabilities."""

from __future__ import annotations

import math

import numpy as np

from lilaw_med.audit.counts import confident_joint
from lilaw_med.audit.difficulty import DIFFICULTY_LEVELS, difficulty, lilaw_term_difficulty

# t0 = (0.9 + 0.5 + 0.2) / 3 = 0.5333, t1 = (0.7 + 0.6) / 2 = 0.65
LABELS = np.array([0, 0, 0, 1, 1])
PROBS = np.array([
    [0.9, 0.1],  # given 0: p0 0.9 >= t0, p1 below: confident class 0 = given     -> easy
    [0.5, 0.5],  # given 0: 0.5 < t0 and 0.5 < t1: no confident class             -> moderate
    [0.2, 0.8],  # given 0: p1 0.8 >= t1, p0 below: confident class 1 != given   -> hard
    [0.3, 0.7],  # given 1: p1 0.7 >= t1                                          -> easy
    [0.4, 0.6],  # given 1: 0.6 < t1 = 0.65, 0.4 < t0: the argmax IS the label, yet -> moderate
])


def test_levels_compare_each_probability_with_its_class_threshold():
    assert difficulty(LABELS, PROBS).tolist() == ["easy", "moderate", "hard", "easy", "moderate"]


def test_given_thresholds_replace_the_computed_ones():
    # thresholds nobody reaches: everything moderate
    assert difficulty(LABELS, PROBS, thresholds=np.array([0.95, 0.95])).tolist() == ["moderate"] * 5
    # low thresholds: the confident class is the argmax; item 1 (a tie) left out
    got = difficulty(LABELS, PROBS, thresholds=np.array([0.1, 0.1]))
    assert got[[0, 2, 3, 4]].tolist() == ["easy", "hard", "easy", "easy"]
    # only class 1 can be confident (t0 = 1): item 0's 0.9 no longer counts, item 4's 0.6 now does
    got = difficulty(LABELS, PROBS, thresholds=np.array([1.0, 0.6]))
    assert got.tolist() == ["moderate", "moderate", "hard", "easy", "easy"]


def test_an_item_without_probabilities_has_no_level():
    labels = np.append(LABELS, 1)
    probs = np.vstack([PROBS, [math.nan, math.nan]])
    got = difficulty(labels, probs)
    assert got[-1] == "" and got[:5].tolist() == ["easy", "moderate", "hard", "easy", "moderate"]


def test_hard_items_are_the_confident_joints_off_diagonal_and_easy_its_diagonal():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=60)
    labels = rng.integers(0, 3, size=60)
    joint = confident_joint(labels, probs, calibrate=False)
    levels = difficulty(labels, probs)
    assert (levels == "easy").sum() == np.trace(joint)
    assert (levels == "hard").sum() == joint.sum() - np.trace(joint)
    assert (levels == "moderate").sum() == 60 - joint.sum()
    for k in range(3):
        assert ((levels == "hard") & (labels == k)).sum() == joint[k].sum() - joint[k, k]


def test_lilaw_term_difficulty_names_the_dominant_mean_term():
    nan = math.nan
    # per item, means over two epochs (NaN epochs skipped):
    # item 0: alpha 2.5, delta 1.0, beta 0.5 -> easy;  item 1: alpha 1, delta 2, beta 0.5 -> moderate
    # item 2: alpha 0.5, delta 1, beta 2.5 (one epoch seen) -> hard;  item 3: never seen -> ""
    w_alpha = np.array([[3.0, 1.0, 0.5, nan], [2.0, 1.0, nan, nan]])
    w_delta = np.array([[1.0, 2.0, 1.0, nan], [1.0, 2.0, nan, nan]])
    w_beta = np.array([[0.5, 0.5, 2.5, nan], [0.5, 0.5, nan, nan]])
    assert lilaw_term_difficulty(w_alpha, w_beta, w_delta).tolist() == ["easy", "moderate", "hard", ""]
    assert DIFFICULTY_LEVELS == ("easy", "moderate", "hard")
