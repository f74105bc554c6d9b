"""Metrics, calibration and the class-imbalance helpers against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.scale_predict import threshold_by_sklearn_calls  # the former implementation, the reference
from lilaw_med.training.evaluation import (
    apply_calibration,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    is_better,
)
from lilaw_med.training.sampling import ClassBalancedSampler, inverse_frequency_weights


def test_ece_matches_a_hand_computed_value() -> None:
    # confidences 0.9 (correct), 0.9 (wrong) in bin (0.8667, 0.9333]; 0.6 (correct) in (0.6, 0.6667]... with 5 bins:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    # 5 bins: 0.9 -> bin 4 (acc 0.5, conf 0.9), 0.6 -> bin 2 (acc 1, conf 0.6)
    expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_metrics_of_a_small_multiclass_case() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]]))
    labels = np.array([0, 1, 2, 1])
    m = classification_metrics(logits, labels, class_names=["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    nll = -np.mean(np.log([0.7, 0.8, 0.6, 0.1]))
    assert m["loss"] == pytest.approx(nll, rel=1e-6)
    # macro one-vs-rest: a (0.7 above 0.1, 0.2, 0.5) and c (0.6 above 0.1, 0.1, 0.4) rank perfectly;
    # b's positives 0.8 and 0.1 beat its negatives 0.2, 0.2 in 2 of 4 pairs
    assert m["auroc"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)


def test_binary_single_logit_auroc_and_threshold() -> None:
    p = np.array([0.1, 0.35, 0.4, 0.8, 0.45, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    logits = torch.logit(torch.tensor(p)).reshape(-1, 1)
    m = classification_metrics(logits, y)
    assert m["auroc"] == 1.0 and m["accuracy"] == pytest.approx(5 / 6)  # 0.45 < 0.5 is missed
    t = choose_threshold(p, y)
    assert t == pytest.approx(0.425)  # midway between the scores it separates
    m_t = classification_metrics(logits, y, threshold=t)
    assert m_t["accuracy"] == 1.0
    probs, pred = apply_calibration(logits, threshold=t)
    assert probs.shape == (6, 2) and pred.tolist() == y.tolist()


def test_auroc_is_nan_when_one_class_is_present_and_nan_is_never_better() -> None:
    m = classification_metrics(torch.randn(4, 2), np.zeros(4, dtype=int))
    assert math.isnan(m["auroc"])
    assert not is_better("auroc", float("nan"), 0.5)
    assert is_better("auroc", 0.6, None) and is_better("loss", 0.1, 0.2) and not is_better("ece", 0.3, 0.2)


def test_temperature_fit_recovers_the_scale_of_overconfident_logits() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 3, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    t = fit_temperature(true_logits * 3.0, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = classification_metrics(true_logits * 3.0, labels.numpy())
    after = classification_metrics(true_logits * 3.0, labels.numpy(), temperature=t)
    assert after["loss"] < before["loss"] and after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # a temperature never changes the argmax


def test_multi_label_metrics_average_over_labels() -> None:
    logits = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [3.0, 3.0], [-3.0, -3.0]])
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    m = classification_metrics(logits, labels, class_names=["x", "y"], multi_label=True)
    assert m["accuracy"] == 1.0 and m["auroc"] == 1.0 and m["per_class"]["y"]["recall"] == 1.0


def test_inverse_frequency_weights_are_sklearn_balanced() -> None:
    w = inverse_frequency_weights([0, 0, 0, 1], 3)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_class_balanced_sampler_balances_and_resumes() -> None:
    labels = [0] * 90 + [1] * 10
    s = ClassBalancedSampler(labels, seed=3)
    s.set_epoch(1)
    draw = list(s)
    assert len(draw) == 100
    counts = np.bincount([labels[i] for i in draw], minlength=2)
    assert 30 < counts[1] < 70  # about half, where uniform sampling gives about 10
    s.set_epoch(1)
    s.set_start(40)
    assert list(s) == draw[40:]
    assert list(s) == draw  # the offset applies once
    s.set_epoch(2)
    assert list(s) != draw



@pytest.mark.parametrize("seed", range(12))
def test_threshold_by_sorting_equals_one_sklearn_call_per_candidate(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
    if seed % 3 == 0:  # few distinct scores: many ties between items and between candidates
        score = rng.integers(0, 6, n) / 5.0
    elif seed % 3 == 1:  # rounded scores, a few items exactly at 0.5
        score = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 2)
        score[rng.random(n) < 0.05] = 0.5
    else:  # continuous scores that separate the classes perfectly: a plateau of equal optima
        score = np.where(y == 1, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.3, n))
    assert choose_threshold(score, y) == threshold_by_sklearn_calls(score, y)


def test_threshold_at_hand_computed_cases() -> None:
    # negatives 0, 0.125, positives 0.625, 1: candidates 0.0625, 0.375, 0.8125 and 0.5; balanced
    # accuracy (TNR + TPR) / 2 = 0.75, 1, 0.75 and 1: the tie goes to 0.5, the candidate added by hand
    assert choose_threshold(np.array([0.0, 0.125, 0.625, 1.0]), np.array([0, 0, 1, 1])) == 0.5
    # negatives 0.125, 0.5, positives 0.75, 1: 0.5 itself predicts the negative at 0.5 positive (p >= t),
    # (1/2 + 1) / 2; the midpoint 0.625 separates the classes
    assert choose_threshold(np.array([0.125, 0.5, 0.75, 1.0]), np.array([0, 0, 1, 1])) == 0.625
    # negatives 0, 0.625, 0.625, positives 0.375, 0.5, 1: at 0.1875 (1/3 + 1) / 2 = 2/3, at 0.4375 and
    # 0.5 (1/3 + 2/3) / 2, at 0.5625 (1/3 + 1/3) / 2, at 0.8125 (1 + 1/3) / 2 = 2/3: two optima equally
    # far from 0.5, the lower one (met first) is kept
    p = np.array([0.0, 0.375, 0.5, 0.625, 0.625, 1.0])
    y = np.array([0, 1, 1, 0, 0, 1])
    assert choose_threshold(p, y) == 0.1875 == threshold_by_sklearn_calls(p, y)
    # one class only, or no item: 0.5
    assert choose_threshold(np.array([0.1, 0.9]), np.array([1, 1])) == 0.5
    assert choose_threshold(np.zeros(0), np.zeros(0, dtype=int)) == 0.5
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        choose_threshold(np.array([0.1, 0.9]), np.array([0, 2]))


@pytest.mark.parametrize(("flip_0", "flip_1"), [(0.4, 0.4), (0.1, 0.35), (0.3, 0.05)])
def test_threshold_fitted_on_noisy_labels_keeps_the_clean_balanced_accuracy(flip_0: float, flip_1: float) -> None:
    # class-conditional noise scales Youden's J by a positive constant (docs/method.md), so the threshold
    # chosen on noisy labels is the clean optimum up to sampling noise; a plain-accuracy threshold is not
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.3).astype(int)
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y - 0.8)))
    flip = np.where(y == 0, rng.random(n) < flip_0, rng.random(n) < flip_1)
    noisy = np.where(flip, 1 - y, y)
    grid = np.unique(score)[::20]
    clean_best = max(balanced_accuracy_score(y, (score >= t).astype(int)) for t in grid)
    t = choose_threshold(score, noisy)
    assert balanced_accuracy_score(y, (score >= t).astype(int)) >= clean_best - 0.02  # variance, not bias
    if (flip_0, flip_1) == (0.1, 0.35):  # the noisy labels' balance pulls an accuracy threshold far off
        t_acc = max(grid, key=lambda u: accuracy_score(noisy, (score >= u).astype(int)))
        assert balanced_accuracy_score(y, (score >= t_acc).astype(int)) < clean_best - 0.1


def test_class_bias_undoes_a_learned_prior_by_hand() -> None:
    from lilaw_med.training.evaluation import apply_calibration, choose_class_bias

    # class 0 holds 6 of 9 labels and the logits favour it by log 2: items 6-8 are classes 1 and 2 but argmax says 0
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    z = np.zeros((9, 3))
    z[:6, 0] = 2.0
    z[6:8] = [np.log(2.0), 0.0, -1.0]
    z[8] = [np.log(2.0), -1.0, 0.0]
    bias, tau = choose_class_bias(z, y)
    # smoothed prior (7, 3, 2) / 12: item 8 moves to class 2 once tau * log(7/2) > log 2 (tau > 0.553),
    # items 6-7 to class 1 once tau * log(7/3) > log 2 (tau > 0.818); the smallest tau with all three is 0.9
    assert tau == pytest.approx(0.9)
    np.testing.assert_allclose(bias, -0.9 * np.log(np.array([7, 3, 2]) / 12.0))
    _, pred = apply_calibration(z, class_bias=bias)
    np.testing.assert_array_equal(pred, y)
    _, plain = apply_calibration(z)
    assert (plain[6:] == 0).all()
    # a temperature changes the probabilities, not the choice of tau or the decision
    bias_t, tau_t = choose_class_bias(z, y, temperature=2.0)
    assert tau_t == tau and np.allclose(bias_t, np.asarray(bias) / 2.0)
    np.testing.assert_array_equal(apply_calibration(z, temperature=2.0, class_bias=bias_t)[1], y)


def test_class_bias_is_zero_for_one_class_and_refuses_mismatched_shapes() -> None:
    from lilaw_med.training.evaluation import apply_calibration, choose_class_bias

    assert choose_class_bias(np.eye(3), np.zeros(3, dtype=int)) == ([0.0, 0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="labels must lie in"):
        choose_class_bias(np.eye(3), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="does not fit"):
        apply_calibration(np.eye(3), class_bias=[0.0, 1.0])


def test_prior_correction_fitted_on_symmetric_noisy_labels_keeps_the_clean_balanced_accuracy() -> None:
    """Three classes, 60/25/15 %, a model whose logits carry the training prior: the strength chosen on
    labels with 30% symmetric noise gives a clean balanced accuracy within 0.02 of the strength chosen on
    the clean labels, and well above no correction."""
    from sklearn.metrics import balanced_accuracy_score

    from lilaw_med.training.evaluation import apply_calibration, choose_class_bias

    rng = np.random.default_rng(0)
    n, prior = 6000, np.array([0.6, 0.25, 0.15])
    y = rng.choice(3, size=n, p=prior)
    z = rng.normal(0.0, 1.0, (n, 3))
    z[np.arange(n), y] += 1.2
    z += np.log(prior)  # what training on imbalanced labels teaches
    noisy = y.copy()
    flip = rng.random(n) < 0.3
    noisy[flip] = (y[flip] + rng.integers(1, 3, flip.sum())) % 3
    clean_bias, clean_tau = choose_class_bias(z[: n // 2], y[: n // 2])
    noisy_bias, noisy_tau = choose_class_bias(z[: n // 2], noisy[: n // 2])
    test = slice(n // 2, n)

    def bacc(bias):
        return balanced_accuracy_score(y[test], apply_calibration(z[test], class_bias=bias)[1])

    assert clean_tau > 0.5 and noisy_tau > 0.5
    assert abs(bacc(noisy_bias) - bacc(clean_bias)) < 0.02
    assert bacc(noisy_bias) > bacc(None) + 0.05
