"""The benchmark harness: noise, pairing, statistics, recorded dynamics, the naive meta step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from benchmarks.harness import _symmetric_noise, inject_noise, mean_ci, paired_difference, run_one
from benchmarks.overhead import NaiveMetaStep
from lilaw_med import LiLAWHandler, LiLAWLoss


def test_symmetric_noise_changes_exactly_the_rate_and_always_to_another_class() -> None:
    labels = np.repeat(np.arange(5), 200)
    noisy = _symmetric_noise(labels, 0.4, 5, np.random.default_rng(0))
    changed = noisy != labels
    assert changed.sum() == 400
    assert noisy.min() >= 0 and noisy.max() <= 4
    # the new classes of the changed items are spread over the 4 other classes
    offsets = (noisy[changed] - labels[changed]) % 5
    assert set(np.unique(offsets)) == {1, 2, 3, 4}


def test_noise_is_a_function_of_the_seed_only() -> None:
    labels = np.repeat(np.arange(2), 100)
    a = inject_noise(labels, "symmetric", 0.3, 2, seed=3)
    b = inject_noise(labels, "symmetric", 0.3, 2, seed=3)
    c = inject_noise(labels, "symmetric", 0.3, 2, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(inject_noise(labels, "none", 0.0, 2, seed=3), labels)
    with pytest.raises(ValueError, match="not available"):
        inject_noise(labels, "no-such-kind", 0.2, 2, seed=0)


def test_asymmetric_noise_moves_grades_to_their_neighbours_only() -> None:
    labels = np.repeat(np.arange(5), 400)
    noisy = inject_noise(labels, "asymmetric", 0.4, 5, seed=0, ordinal=True)
    moved = noisy != labels
    assert np.all(np.abs(noisy[moved] - labels[moved]) == 1)
    assert moved.mean() == pytest.approx(0.4, abs=0.05)
    binary = inject_noise(np.repeat(np.arange(2), 500), "asymmetric", 0.3, 2, seed=0)
    assert np.all(binary[:500] == 0)  # class 0 never flips; class 1 flips to 0


def test_instance_noise_needs_features_and_depends_on_them() -> None:
    labels = np.repeat(np.arange(3), 300)
    feats = np.random.default_rng(0).normal(size=(900, 16))
    a = inject_noise(labels, "instance", 0.3, 3, seed=1, features=feats)
    assert (a != labels).mean() == pytest.approx(0.3, abs=0.06)
    with pytest.raises(ValueError, match="features"):
        inject_noise(labels, "instance", 0.3, 3, seed=1)


def test_paired_difference_matches_the_hand_computed_t_interval() -> None:
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * std 1 / sqrt(3)
    assert d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert d["ci_low"] == pytest.approx(2.0 - half) and d["ci_high"] == pytest.approx(2.0 + half)
    assert d["wins"] == 3 and d["n"] == 3
    assert math.isnan(mean_ci([0.5])["ci_low"])


def _trainer(meta: str) -> tuple[SupervisedTrainer, LiLAWLoss]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    train = [{"image": torch.randn(6, 8, generator=g), "label": torch.randint(0, 3, (6,), generator=g)}]
    val = [{"image": torch.randn(5, 8, generator=g), "label": torch.randint(0, 3, (5,), generator=g)}]
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=train, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss,
                                decollate=False)
    # the spec's step on both sides: the naive step knows no epoch budget
    (LiLAWHandler(val, loss, epoch_budget=None) if meta == "lilaw" else NaiveMetaStep(val, loss)).attach(trainer)
    return trainer, loss


def test_naive_meta_step_takes_the_handlers_step_and_discards_network_gradients() -> None:
    fast, fast_loss = _trainer("lilaw")
    naive, naive_loss = _trainer("naive")
    fast.run()
    naive.run()
    assert fast_loss.weighting.as_dict() != {"alpha": 2.0, "beta": 2.0, "delta": 2.0}
    for k, v in fast_loss.weighting.as_dict().items():
        assert naive_loss.weighting.as_dict()[k] == pytest.approx(v, abs=1e-6)
    assert all(p.grad is None for p in naive.network.parameters())


@pytest.mark.realdata
def test_run_one_pairs_methods_by_seed_and_records_every_item(shared_data) -> None:
    kw = dict(dataset="breastmnist", noise_kind="symmetric", noise_rate=0.4, seed=1, epochs=2,
              train_items=np.arange(160), record_dynamics=True)
    ce = run_one(method="ce", predict_items=[0, 5], **kw)
    ce_again = run_one(method="ce", **kw)
    lilaw = run_one(method="lilaw", **kw)
    # same split, noise and labels for both methods; deterministic reruns
    assert np.array_equal(ce.train_idx, lilaw.train_idx) and np.array_equal(ce.val_idx, lilaw.val_idx)
    assert np.array_equal(ce.noisy_labels, lilaw.noisy_labels)
    assert len(ce.val_idx) == 24 and len(ce.train_idx) == 136
    assert ce.final == ce_again.final
    assert ce.noise_mask.mean() == pytest.approx(0.4, abs=0.1)
    # every trained item recorded once per epoch; baselines train with weight 1, LiLAW with w = sum of terms
    d = lilaw.dynamics
    assert d["prob_label"].shape == (2, 136) and not np.isnan(d["prob_label"]).any()
    assert np.all(ce.dynamics["weight"] == 1.0)
    np.testing.assert_allclose(d["weight"], d["w_alpha"] + d["w_beta"] + d["w_delta"], rtol=1e-5)
    assert np.all(d["prob_label"] <= d["prob_max"] + 1e-6)
    assert lilaw.lilaw["steps"] == 2 * 3  # ceil(136 / 64) meta steps per epoch
    np.testing.assert_allclose(ce.predict_probs.sum(axis=1), 1.0, rtol=1e-5)
    assert ce.predict_probs.shape == (2, 2)


def test_multiclass_runs_are_calibrated_on_noisy_validation_and_meta_every_thins_the_meta_steps(shared_data) -> None:
    kw = dict(dataset="retinamnist", noise_kind="symmetric", noise_rate=0.4, seed=0, epochs=1,
              train_items=np.arange(160), network="small_cnn")
    every1 = run_one(method="lilaw", **kw)
    every2 = run_one(method="lilaw", meta_every=2, **kw)
    # 136 training items, batch 64: 3 iterations; the meta step after iterations 1, 2, 3 or after 2 only
    assert every1.lilaw["steps"] == 3 and every2.lilaw["steps"] == 1
    assert every2.config["meta_every"] == 2
    for ckpt in (every1.final, every1.best):
        # the class-prior correction was fitted (a strength on the grid) and scored on the clean test labels
        assert ckpt["prior_strength"] in [round(0.1 * i, 1) for i in range(21)]
        assert 0.0 <= ckpt["accuracy_calibrated"] <= 1.0 and 0.0 <= ckpt["balanced_accuracy_calibrated"] <= 1.0
        assert "threshold" not in ckpt


def test_meta_every_rule_takes_the_largest_k_within_the_tolerance() -> None:
    from benchmarks.meta_every import choose_k

    assert choose_k({1: 0.0, 2: -0.004, 4: 0.01, 8: -0.02}) == 4
    assert choose_k({1: 0.0, 2: -0.006, 4: -0.01, 8: -0.02}) == 1


def test_noise_table_pairs_each_method_with_ce_by_seed() -> None:
    from benchmarks.noise_table import table_markdown

    def run(auroc: float) -> dict:
        m = {"auroc": auroc, "accuracy": 0.5, "balanced_accuracy": 0.5, "accuracy_calibrated": 0.6,
             "balanced_accuracy_calibrated": 0.6}
        return {"final": m, "best": m}

    results = {"toy": {("symmetric", 0.4): {"ce": {0: run(0.80), 1: run(0.90)},
                                           "lilaw": {0: run(0.85), 1: run(0.97), 2: run(0.5)}}}}
    md = table_markdown(results)
    # seed 2 has no CE partner: the means use 3 seeds, the difference the 2 paired ones (+5 and +7 points)
    assert "| symmetric 40% | lilaw | 3 | 77.3 ± " in md
    assert "| symmetric 40% | lilaw | 2 | +6.0 [" in md and "2/2 |" in md
