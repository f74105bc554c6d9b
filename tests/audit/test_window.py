"""The scoring window (lilaw_med.audit.window): which epochs, chosen from hand-made validation
curves, and the class probabilities averaged over them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lilaw_med.audit.window import WINDOW_RULES, ScoringWindow, choose_window, window_pred_probs
from lilaw_med.run.dynamics_format import load_dynamics
from tests.audit.conftest import N_TRAIN, WRONG, make_run_folder

NAN = math.nan


def test_every_rule_is_known_and_an_unknown_one_is_a_value_error():
    assert set(WINDOW_RULES) == {"val_loss_at_least_fraction", "best_val_loss", "best_val_accuracy", "all", "last",
                                 "fraction"}
    with pytest.raises(ValueError, match="rule must be one of .* but is 'best'"):
        choose_window(4, "best")
    with pytest.raises(ValueError, match="n_epochs must be at least 1 but is 0"):
        choose_window(0, "all")


def test_best_val_loss_ends_the_window_at_the_epoch_of_the_lowest_loss():
    w = choose_window(4, "best_val_loss", val_loss=np.array([0.9, 0.5, 0.7, 0.6]))
    assert (w.start, w.stop, w.rule, w.n_epochs) == (0, 2, "best_val_loss", 2)  # epochs 1-2
    assert "best at epoch 2" in w.reason and "epochs 1-2 of 4" in w.reason


def test_best_val_loss_takes_the_later_of_equal_epochs():
    assert choose_window(4, "best_val_loss", val_loss=np.array([0.9, 0.5, 0.5, 0.6])).stop == 3


def test_best_val_loss_skips_epochs_without_a_value():
    # NaN epochs (no evaluation) are never the best: the minimum of 0.8, 0.6, 0.7 is epoch 4
    assert choose_window(5, "best_val_loss", val_loss=np.array([NAN, 0.8, NAN, 0.6, 0.7])).stop == 4


@pytest.mark.parametrize("curve", [None, np.array([NAN, NAN, NAN])])
def test_without_a_validation_curve_the_window_falls_back_to_every_epoch(curve):
    w = choose_window(3, "best_val_loss", val_loss=curve)
    assert (w.start, w.stop, w.rule) == (0, 3, "all") and "no validation loss" in w.reason
    w = choose_window(3, "best_val_accuracy", val_accuracy=curve)
    assert (w.start, w.stop, w.rule) == (0, 3, "all") and "no validation accuracy" in w.reason


def test_a_curve_of_the_wrong_length_is_a_value_error():
    with pytest.raises(ValueError, match="the validation loss curve has 3 values for 4 epochs"):
        choose_window(4, "best_val_loss", val_loss=np.array([0.3, 0.2, 0.1]))


def test_best_val_accuracy_ends_at_the_highest_accuracy_later_epochs_winning_ties():
    # 0.8 at epochs 2 and 3: the later, 3
    w = choose_window(4, "best_val_accuracy", val_accuracy=np.array([0.6, 0.8, 0.8, 0.7]))
    assert (w.start, w.stop, w.rule) == (0, 3, "best_val_accuracy")
    # a NaN epoch is never the best (not even as -inf turned into +inf)
    assert choose_window(3, "best_val_accuracy", val_accuracy=np.array([0.5, NAN, 0.4])).stop == 1


def test_all_and_last():
    assert (choose_window(5, "all").start, choose_window(5, "all").stop) == (0, 5)
    last = choose_window(5, "last")
    assert (last.start, last.stop, last.n_epochs) == (4, 5, 1) and "(5)" in last.reason


@pytest.mark.parametrize(("n_epochs", "fraction", "stop"), [
    (10, 0.2, 2),   # ceil(2.0) = 2
    (10, 0.25, 3),  # ceil(2.5) = 3
    (3, 0.2, 1),    # ceil(0.6) = 1
    (10, 0.3, 3),   # 0.3 * 10 is 3.0000000000000004 in floating point: still 3, not 4
    (1, 0.2, 1),    # at least one epoch
    (7, 1.0, 7),
])
def test_fraction_keeps_the_first_ceil_fraction_times_epochs(n_epochs, fraction, stop):
    w = choose_window(n_epochs, "fraction", fraction=fraction)
    assert (w.start, w.stop, w.rule) == (0, stop, "fraction")


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_a_value_error(fraction):
    with pytest.raises(ValueError, match="fraction must lie in"):
        choose_window(5, "fraction", fraction=fraction)


def test_val_loss_at_least_fraction_keeps_the_fraction_when_the_loss_is_best_earlier():
    loss = np.array([0.6, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.7, 0.8, 0.9])  # best at epoch 2
    # floor: ceil(0.5 * 10) = 5 epochs > 2
    w = choose_window(10, "val_loss_at_least_fraction", val_loss=loss, fraction=0.5)
    assert (w.start, w.stop, w.rule) == (0, 5, "val_loss_at_least_fraction")
    assert "best at epoch 2" in w.reason and "epochs 1-5 of 10" in w.reason


def test_val_loss_at_least_fraction_follows_the_loss_when_it_is_best_later():
    loss = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.5, 0.6, 0.7])  # best at epoch 7 > floor 5
    w = choose_window(10, "val_loss_at_least_fraction", val_loss=loss, fraction=0.5)
    assert (w.start, w.stop, w.rule) == (0, 7, "best_val_loss")  # the rule that chose it
    at_floor = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.45, 0.5, 0.5, 0.6, 0.7])  # best exactly at epoch 5
    assert choose_window(10, "val_loss_at_least_fraction", val_loss=at_floor, fraction=0.5).stop == 5


def test_val_loss_at_least_fraction_without_a_curve_falls_back_to_every_epoch():
    w = choose_window(10, "val_loss_at_least_fraction", val_loss=None, fraction=0.2)
    assert (w.start, w.stop, w.rule) == (0, 10, "all")


def test_a_scoring_window_must_hold_an_epoch():
    with pytest.raises(ValueError, match=r"0 <= start < stop but is \[2, 2\)"):
        ScoringWindow(2, 2, "all", "")
    with pytest.raises(ValueError, match="start < stop"):
        ScoringWindow(-1, 2, "all", "")


# ---------------------------------------------------------------------------- window_pred_probs
def test_window_probabilities_average_the_recorded_probs_over_the_window_epochs():
    nan3 = [NAN, NAN, NAN]
    probs = np.array([  # (E=3, N=3, C=3)
        [[0.6, 0.2, 0.2], nan3, nan3],                          # epoch 1: item 1 and 2 not seen
        [[0.2, 0.6, 0.2], [0.1, 0.1, 0.8], nan3],               # epoch 2: item 2 not seen
        [[0.0, 0.0, 1.0], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]],  # epoch 3
    ])
    dyn = {"probs": probs, "prob_label": probs[:, :, 0]}
    labels = np.array([0, 2, 1])
    got = window_pred_probs(dyn, labels, ScoringWindow(0, 2, "best_val_loss", ""), 3)
    # item 0: ([0.6, 0.2, 0.2] + [0.2, 0.6, 0.2]) / 2; item 1: epoch 2 alone; item 2: never seen in epochs 1-2
    np.testing.assert_allclose(got[0], [0.4, 0.4, 0.2])
    np.testing.assert_allclose(got[1], [0.1, 0.1, 0.8])
    assert np.isnan(got[2]).all()
    np.testing.assert_allclose(window_pred_probs(dyn, labels, ScoringWindow(2, 3, "last", ""), 3), probs[2])


def test_window_probabilities_of_two_classes_come_exactly_from_prob_label_when_probs_were_not_recorded():
    # version-1 dynamics: only s[y] per item; two classes: (1 - s[y], s[y]) placed by the given label
    prob_label = np.array([[0.8, 0.3], [0.6, 0.5], [0.1, 0.1]])  # (E=3, N=2)
    got = window_pred_probs({"prob_label": prob_label}, np.array([0, 1]), ScoringWindow(0, 2, "all", ""), 2)
    # means over epochs 1-2: item 0: 0.7 (given 0) -> [0.7, 0.3]; item 1: 0.4 (given 1) -> [0.6, 0.4]
    np.testing.assert_allclose(got, [[0.7, 0.3], [0.6, 0.4]])


def test_window_probabilities_from_prob_label_spread_the_rest_evenly_over_the_other_classes():
    got = window_pred_probs({"prob_label": np.array([[0.4, NAN]])}, np.array([2, 0]), ScoringWindow(0, 1, "all", ""), 3)
    # item 0 given 2 with s[y] 0.4: the other two classes share 0.6 -> [0.3, 0.3, 0.4]; item 1 unseen: NaN
    np.testing.assert_allclose(got[0], [0.3, 0.3, 0.4])
    assert np.isnan(got[1]).all()


def test_version_1_dynamics_give_the_same_binary_window_probabilities_as_recorded_probs(tmp_path):
    v2 = load_dynamics(make_run_folder(tmp_path / "v2"))
    v1 = load_dynamics(make_run_folder(tmp_path / "v1", with_probs=False))
    assert v2.has_probs and not v1.has_probs and "probs" not in v1.as_dict()
    from lilaw_med.audit.core import RunRecord

    labels = RunRecord.read(tmp_path / "v2" / "run").labels(v2.ids)
    window = ScoringWindow(0, 2, "best_val_loss", "")
    from_probs = window_pred_probs(v2.as_dict(), labels, window, 2)
    from_label = window_pred_probs(v1.as_dict(), labels, window, 2)
    np.testing.assert_allclose(from_label, from_probs, atol=2e-3)  # float16 storage
    # the wrong labels: p[given] = (sigmoid(-3) + sigmoid(0)) / 2 = (0.0474 + 0.5) / 2 = 0.2737
    p_given = from_label[np.arange(N_TRAIN), labels]
    np.testing.assert_allclose(p_given[sorted(WRONG)], 0.2737, atol=1e-3)


def test_window_means_read_one_epoch_at_a_time_equal_nanmean_of_the_stacked_epochs_bit_for_bit(tmp_path):
    from benchmarks.scale_audit import write_synthetic_run
    from lilaw_med.audit.window import epoch_mean, prefix_pred_probs

    dyn = load_dynamics(write_synthetic_run(tmp_path / "run", 300, epochs=6, num_classes=4, seed=2))
    labels = np.zeros(len(dyn.ids), dtype=np.int64)
    stacked = dyn.as_dict()
    stacked["probs"][2, :40] = np.nan  # items not seen in epoch 3
    stacked["weight"][:, 7] = np.nan  # an item never seen
    views = dyn.views()
    for stop, streamed in prefix_pred_probs({"probs": stacked["probs"]}, labels, [2, 5, 6], 4):
        np.testing.assert_array_equal(streamed, np.nanmean(stacked["probs"][:stop].astype(np.float64), axis=0))
    for stop, streamed in prefix_pred_probs(views, labels, [1, 4], 4):
        np.testing.assert_array_equal(streamed, np.nanmean(dyn["probs"][:stop].astype(np.float64), axis=0))
    with pytest.warns(RuntimeWarning):
        expected = np.nanmean(stacked["weight"].astype(np.float64), axis=0)
    np.testing.assert_array_equal(epoch_mean(stacked["weight"]), expected)
    assert np.isnan(epoch_mean(stacked["weight"])[7])
    np.testing.assert_array_equal(epoch_mean(views["loss"][1:3]), np.nanmean(dyn["loss"][1:3].astype(np.float64), axis=0))
