"""Label quality scores, issue rules and noise-rate estimates: known orderings on constructed dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from lilaw_med.audit.scores import (
    SCORE_METHODS,
    consensus_prediction,
    difficulty,
    estimate_noise_rate,
    find_label_issues,
    get_label_quality_scores,
    margins,
    order_label_issues,
)
from lilaw_med.weighting import lilaw_terms


def _dynamics(x: np.ndarray, alpha: float = 2.0, beta: float = 2.0, delta: float = 2.0) -> dict[str, np.ndarray]:
    """Binary dynamics from s[y] (E, N): every field consistent with the LiLAW formulas."""
    import torch

    e, n = x.shape
    labels = torch.zeros(n, dtype=torch.long)
    out: dict[str, list] = {k: [] for k in ("prob_label", "prob_max", "prob_other", "pred_label", "w_alpha",
                                            "w_beta", "w_delta", "weight", "loss")}
    for row in x:
        p = torch.tensor(row, dtype=torch.float64)
        logits = torch.stack([torch.log(p), torch.log(1 - p)], dim=1)
        t = lilaw_terms(logits, labels, alpha, beta, delta)
        out["prob_label"].append(t.prob_label.numpy())
        out["prob_max"].append(t.prob_max.numpy())
        out["prob_other"].append(1 - t.prob_label.numpy())
        out["pred_label"].append(t.pred_label.numpy())
        for k in ("w_alpha", "w_beta", "w_delta", "weight"):
            out[k].append(getattr(t, k).numpy())
        out["loss"].append(-np.log(row))
    return {k: np.stack(v) for k, v in out.items()}


# item 0: learnt at once; item 1: learnt late (memorised); item 2: never learnt; item 3: forgotten
X = np.array([
    [0.90, 0.95, 0.97, 0.98],
    [0.10, 0.20, 0.60, 0.95],
    [0.05, 0.04, 0.03, 0.02],
    [0.90, 0.80, 0.30, 0.20],
]).T  # (E=4, N=4)


@pytest.mark.parametrize("method", ["mean_prob_label", "aum", "mean_weight_terms", "mean_loss"])
def test_area_scores_rank_late_learnt_labels_below_early_learnt_ones(method):
    q = get_label_quality_scores(_dynamics(X), method=method)
    assert q.shape == (4,) and np.all((q >= 0) & (q <= 1))
    assert q[0] > q[3] > q[1] > q[2]  # area under the curve: early and kept > forgotten > memorised late > never
    np.testing.assert_array_equal(order_label_issues(q), [2, 1, 3, 0])


def test_self_confidence_is_the_last_epoch_and_trusts_memorised_labels():
    q = get_label_quality_scores(_dynamics(X), method="self_confidence")
    np.testing.assert_allclose(q, X[-1])
    assert q[1] > q[3]  # the memorised (likely wrong) label looks clean at the end: why areas work better


def test_max_epochs_uses_the_early_part_of_training():
    q = get_label_quality_scores(_dynamics(X), method="mean_prob_label", max_epochs=2)
    np.testing.assert_allclose(q, X[:2].mean(axis=0))
    q = get_label_quality_scores(_dynamics(X), method="mean_prob_label", skip_epochs=3)
    np.testing.assert_allclose(q, X[3])


def test_unseen_epochs_are_ignored_and_never_seen_items_are_nan():
    d = _dynamics(X)
    d["prob_label"] = d["prob_label"].copy()
    d["prob_label"][0, 0] = np.nan
    d["prob_label"][:, 2] = np.nan
    q = get_label_quality_scores(d, method="mean_prob_label")
    assert q[0] == pytest.approx(X[1:, 0].mean()) and np.isnan(q[2])
    assert order_label_issues(q)[-1] == 2  # NaN last


def test_margin_and_mean_weight_and_unknown_method():
    d = _dynamics(X)
    np.testing.assert_allclose(margins(d), 2 * X - 1)
    del d["prob_other"]
    np.testing.assert_allclose(margins(d), 2 * X - 1)  # binary runner-up from prob_max
    assert get_label_quality_scores(_dynamics(X), method="mean_weight").shape == (4,)
    with pytest.raises(ValueError, match="method must be one of"):
        get_label_quality_scores(d, method="nope")
    assert set(SCORE_METHODS) >= {"self_confidence", "mean_prob_label", "aum", "mean_weight_terms"}


def test_difficulty_follows_the_dominant_lilaw_term():
    x = np.array([[0.99, 0.5, 0.01]] * 3)  # agreeing, uncertain, confidently contradicting
    assert difficulty(_dynamics(x)).tolist() == ["easy", "moderate", "hard"]


def test_noise_rate_rule_flags_the_lowest_scores_per_class_with_per_class_counts():
    labels = np.array([0] * 10 + [1] * 4)
    q = np.concatenate([np.linspace(0.1, 1.0, 10), np.array([0.9, 0.2, 0.95, 0.8])])
    flags, thr = find_label_issues(q, labels, rule="noise_rate", noise_rate=[0.2, 0.25], return_thresholds=True)
    assert np.nonzero(flags)[0].tolist() == [0, 1, 11]  # two of class 0, one of class 1
    assert thr[0] == pytest.approx(0.2) and thr[1] == pytest.approx(0.2)
    flags = find_label_issues(q, labels, rule="threshold", threshold=[0.15, 0.85])
    assert np.nonzero(flags)[0].tolist() == [0, 11, 13]
    flags = find_label_issues(q, labels, rule="predicted_neq_given", pred_labels=np.r_[[1] * 2, [0] * 8, [1] * 4])
    assert np.nonzero(flags)[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="needs threshold"):
        find_label_issues(q, labels, rule="threshold")


def test_noise_rate_estimates_need_no_clean_labels():
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 2, n)
    noisy = rng.random(n) < 0.3
    q = np.where(noisy, rng.normal(0.25, 0.08, n), rng.normal(0.8, 0.08, n)).clip(0, 1)
    assert estimate_noise_rate(q, labels, method="gmm") == pytest.approx(0.3, abs=0.03)
    assert estimate_noise_rate(q, labels, method="disagreement") == pytest.approx(0.3, abs=0.03)
    pred = np.where(noisy, 1 - labels, labels)
    assert estimate_noise_rate(q, labels, method="disagreement", pred_labels=pred) == pytest.approx(noisy.mean())
    probs = np.zeros((n, 2))
    probs[np.arange(n), labels] = q
    probs[np.arange(n), 1 - labels] = 1 - q
    assert estimate_noise_rate(q, labels, method="confident_learning", pred_probs=probs) == pytest.approx(0.3, abs=0.05)
    per_class = estimate_noise_rate(q, labels, method="gmm", per_class=True)
    assert per_class.shape == (2,)
    flags = find_label_issues(q, labels, rule="noise_rate", noise_rate_method="gmm")
    assert flags.mean() == pytest.approx(0.3, abs=0.03) and (flags & noisy).sum() / flags.sum() > 0.95


def test_consensus_prediction_is_the_most_frequent_class():
    p = np.array([[0, 1, -1], [1, 1, -1], [1, 0, -1]])
    assert consensus_prediction(p).tolist() == [1, 1, -1]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="shape"):
        find_label_issues(np.zeros(3), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"\(E, N\)"):
        get_label_quality_scores({"prob_label": np.zeros(3)})
