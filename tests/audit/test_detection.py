"""Detection metrics on constructed cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lilaw_med.audit.detection import detection_curves, detection_quality, precision_at_k


def test_a_perfect_score_gets_auroc_one_and_full_precision():
    truth = np.array([True, False, False, True, False])
    q = np.array([0.1, 0.9, 0.8, 0.2, 0.7])  # the wrong labels have the lowest quality
    m = detection_quality(q, truth)
    assert m["auroc"] == 1.0 and m["average_precision"] == 1.0 and m["precision_at_noise_count"] == 1.0
    assert m["n_mislabeled"] == 2 and m["noise_rate"] == pytest.approx(0.4)


def test_a_known_mixed_case():
    # ranking by quality: items 0 (bad), 1 (good), 2 (bad), 3 (good), 4 (good)
    truth = np.array([True, False, True, False, False])
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m = detection_quality(q, truth)
    # pairs (bad, good) ranked correctly: item 0 beats 3 goods, item 2 beats 2 of 3 -> 5 / 6
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m["average_precision"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["precision_at_noise_count"] == pytest.approx(0.5)
    assert precision_at_k(q, truth, 1) == 1.0 and precision_at_k(q, truth, 3) == pytest.approx(2 / 3)


def test_an_inverted_score_gets_auroc_zero_and_one_kind_gives_nan():
    truth = np.array([True, False, False])
    assert detection_quality(np.array([0.9, 0.1, 0.2]), truth)["auroc"] == 0.0
    m = detection_quality(np.array([0.1, 0.2]), np.array([False, False]))
    assert math.isnan(m["auroc"]) and m["n_mislabeled"] == 0


def test_curves_and_input_checks():
    c = detection_curves(np.array([0.1, 0.9, 0.5]), np.array([1, 0, 0]))
    assert c["tpr"][-1] == 1.0 and c["fpr"][-1] == 1.0
    with pytest.raises(ValueError, match="same length"):
        detection_quality(np.zeros(2), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="both"):
        detection_curves(np.zeros(2), np.zeros(2, dtype=bool))
