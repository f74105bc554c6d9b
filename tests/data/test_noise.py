"""Label-noise simulators: requested rates within binomial error, matrices respected, seeded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lilaw_med.cli import main
from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.noise import (
    add_noise,
    add_noise_to_datalist,
    asymmetric_noise,
    instance_dependent_noise,
    load_noise_truth,
    pairs_to_transition,
    symmetric_noise,
    uniform_noise,
)

N = 20000


def _labels(k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, N)


def _binomial_bound(p: float, n: int) -> float:
    return 4.0 * np.sqrt(p * (1 - p) / n)  # 4 standard errors


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_symmetric_noise_hits_the_rate_and_spreads_uniformly_over_other_classes(rate: float) -> None:
    y = _labels(5)
    noisy, actual = symmetric_noise(y, rate, 5, seed=0)
    assert actual == pytest.approx(np.mean(noisy != y))
    assert abs(actual - rate) < _binomial_bound(rate, N)
    for c in range(5):
        moved = noisy[(y == c) & (noisy != y)]
        assert c not in moved
        freq = np.bincount(moved, minlength=5)[[k for k in range(5) if k != c]] / len(moved)
        assert np.all(np.abs(freq - 0.25) < _binomial_bound(0.25, len(moved)))


def test_same_seed_same_noisy_labels_and_input_untouched() -> None:
    y = _labels(3)
    before = y.copy()
    a, _ = symmetric_noise(y, 0.3, 3, seed=7)
    b, _ = symmetric_noise(y, 0.3, 3, seed=7)
    c, _ = symmetric_noise(y, 0.3, 3, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(y, before)


def test_asymmetric_noise_follows_the_transition_matrix() -> None:
    t = np.array([[0.7, 0.3, 0.0, 0.0], [0.0, 0.8, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0], [0.1, 0.1, 0.1, 0.7]])
    y = _labels(4)
    noisy, actual = asymmetric_noise(y, 4, transition=t, seed=0)
    for i in range(4):
        row = np.bincount(noisy[y == i], minlength=4) / np.sum(y == i)
        n_i = int(np.sum(y == i))
        for j in range(4):
            assert abs(row[j] - t[i, j]) <= _binomial_bound(max(t[i, j], 1e-3), n_i) + 1e-9, (i, j)
    expected = np.mean([1 - t[c, c] for c in y])
    assert abs(actual - expected) < _binomial_bound(expected, N)


def test_class_pairs_flip_only_the_named_classes() -> None:
    y = _labels(3)
    noisy, _ = asymmetric_noise(y, 3, rate=0.4, pairs={0: 2}, seed=0)
    assert np.all(noisy[y == 1] == 1) and np.all(noisy[y == 2] == 2)
    assert set(np.unique(noisy[y == 0])) == {0, 2}
    assert abs(np.mean(noisy[y == 0] == 2) - 0.4) < _binomial_bound(0.4, int(np.sum(y == 0)))
    np.testing.assert_allclose(pairs_to_transition({0: 2}, 0.4, 3).sum(axis=1), 1.0)


def test_invalid_transition_matrices_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        asymmetric_noise([0, 1], 2, transition=[[0.5, 0.4], [0.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        asymmetric_noise([0, 1], 2, transition=np.eye(3))


def test_instance_dependent_noise_hits_the_mean_rate_and_depends_on_features() -> None:
    y = _labels(4)
    x = np.random.default_rng(2).normal(size=(N, 16))
    noisy, actual = instance_dependent_noise(y, x, 0.3, 4, seed=0)
    assert abs(actual - 0.3) < 0.02
    # the flip target is a function of the features: permuting features changes which samples flip where
    noisy2, _ = instance_dependent_noise(y, x[::-1].copy(), 0.3, 4, seed=0)
    assert np.mean(noisy != noisy2) > 0.05


def _datalist(tmp_path: Path) -> Path:
    items = [{"image": f"i{i}.png", "label": i % 3, "group": f"p{i // 2}"} for i in range(600)]
    path = tmp_path / "dl.json"
    path.write_text(
        json.dumps(
            {"class_names": ["a", "b", "c"], "training": items, "test": [{"image": "t.png", "label": 0}]}
        )
    )
    return path


def test_add_noise_to_datalist_writes_noisy_labels_and_a_sidecar_with_the_truth(tmp_path: Path) -> None:
    src = _datalist(tmp_path)
    res = add_noise_to_datalist(src, tmp_path / "out" / "noisy.json", kind="symmetric", rate=0.4, seed=0)
    clean = load_datalist(src)
    noisy = load_datalist(res.datalist)
    truth = load_noise_truth(res.datalist)
    assert noisy.noise_sidecar == res.sidecar.resolve()
    assert {it["id"] for it in noisy.training} == {it["id"] for it in clean.training}
    assert set(truth) == {it["id"] for it in noisy.training + noisy.validation}
    clean_labels = {it["id"]: it["label"] for it in clean.training + clean.validation}
    assert all(truth[i] == lab for i, lab in clean_labels.items())
    flipped = np.mean([truth[it["id"]] != it["label"] for it in noisy.training])
    assert abs(flipped - 0.4) < _binomial_bound(0.4, len(noisy.training))
    assert noisy.test == [dict(clean.test[0])] or noisy.test[0]["label"] == clean.test[0]["label"]
    with res.sidecar.open() as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"id", "split", "true_label", "noisy_label"}


def test_the_validation_split_a_load_splits_off_is_noised_by_default_and_warned_about_when_left_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the file has no validation split: loading it splits one off the training items before any noise
    src = _datalist(tmp_path)
    res = add_noise_to_datalist(src, tmp_path / "both.json", kind="symmetric", rate=0.4, seed=0)
    noisy, truth = load_datalist(res.datalist), load_noise_truth(res.datalist)
    wrong = np.mean([truth[it["id"]] != it["label"] for it in noisy.validation])
    assert noisy.validation and res.actual_rate["validation"] == pytest.approx(wrong) and wrong > 0
    assert "stays clean" not in caplog.text
    with caplog.at_level("WARNING", logger="lilaw_med.data.noise"):
        only = add_noise_to_datalist(src, tmp_path / "train_only.json", kind="symmetric", rate=0.4, seed=0,
                                     splits=("training",))
    left, source = load_datalist(only.datalist), load_datalist(src)
    assert {it["id"]: it["label"] for it in left.validation} == {it["id"]: it["label"] for it in source.validation}
    assert "dl.json has no validation split" in caplog.text and "--splits training,validation" in caplog.text


def test_noise_on_noise_keeps_the_original_truth(tmp_path: Path) -> None:
    first = add_noise_to_datalist(_datalist(tmp_path), tmp_path / "n1.json", rate=0.3, seed=0)
    second = add_noise_to_datalist(first.datalist, tmp_path / "n2.json", rate=0.3, seed=1)
    assert load_noise_truth(second.datalist) == load_noise_truth(first.datalist)


def test_add_noise_cli_reports_the_actual_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _datalist(tmp_path)
    out = tmp_path / "cli.json"
    assert (
        main(
            ["add-noise", str(src), "--kind", "asymmetric", "--rate", "0.3", "--pairs", "0:1", "-o", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "actual noise rate" in text and out.is_file()
    assert main(["add-noise", str(src), "--kind", "symmetric", "-o", str(out)]) == 1


def test_multi_label_noise_flips_each_flag_with_the_rate() -> None:
    from lilaw_med.data.noise import add_noise

    flags = np.random.default_rng(0).integers(0, 2, (5000, 4))
    noisy, actual = add_noise(flags, "symmetric", 4, rate=0.1, seed=0)
    assert noisy.shape == flags.shape and set(np.unique(noisy)) <= {0, 1}
    assert abs(actual - 0.1) < _binomial_bound(0.1, flags.size)
    with pytest.raises(ValueError, match="only symmetric"):
        add_noise(flags, "asymmetric", 4, rate=0.1)


def test_instance_noise_on_a_datalist_uses_image_thumbnails(
    small_sample: dict[str, Path], tmp_path: Path
) -> None:
    from lilaw_med.data.noise import _image_features

    clean = small_sample["pathology"].parent / "datalist_clean.json"
    res = add_noise_to_datalist(
        clean, tmp_path / "inst.json", kind="instance", rate=0.5, seed=0, splits=("training",)
    )
    given = load_datalist(clean)
    labels = [it["label"] for it in given.training]
    noisy = [it["label"] for it in load_datalist(res.datalist).training]
    # the flips are instance_dependent_noise on the items' 8x8 thumbnails, seeded seed * 1000 + the
    # split's index (training: 0); the rate reported is the share of labels the file changed
    expected, rate = instance_dependent_noise(labels, _image_features(given.training), 0.5, given.num_classes, seed=0)
    assert noisy == expected.tolist()
    assert res.actual_rate["training"] == rate == np.mean(np.array(noisy) != np.array(labels))
    assert res.num_flipped["training"] == sum(a != b for a, b in zip(noisy, labels, strict=True))
    again = add_noise_to_datalist(
        clean, tmp_path / "inst2.json", kind="instance", rate=0.5, seed=0, splits=("training",)
    )
    assert load_datalist(again.datalist).training == load_datalist(res.datalist).training


def test_uniform_noise_redraws_from_all_classes_so_fewer_labels_end_wrong() -> None:


    y = np.repeat(np.arange(2), 50_000)
    noisy, actual = uniform_noise(y, 0.4, 2, seed=0)
    assert actual == pytest.approx(0.4 * 1 / 2, abs=0.005)  # binary: the prototype's 40% is 20% wrong
    y9 = np.repeat(np.arange(9), 10_000)
    noisy9, actual9 = uniform_noise(y9, 0.6, 9, seed=0)
    assert actual9 == pytest.approx(0.6 * 8 / 9, abs=0.01)
    wrong = noisy9[noisy9 != y9] - y9[noisy9 != y9]
    assert set(np.unique(wrong % 9)) == set(range(1, 9))  # every other class is reached
    assert add_noise(y9, "uniform", 9, rate=0.6, seed=0)[1] == actual9  # the kind by name
