"""benchmarks.adrenal_pipeline on a tiny synthetic 3D npz: NIfTI files, noise, two trainings per seed, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.adrenal_pipeline import METHODS, METRICS, run_pipeline


def _tiny_npz(path):
    rng = np.random.default_rng(0)

    def split(n):
        labels = (np.arange(n) % 2).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 12, 12, 12)).astype(np.uint8)
        images[labels == 1, 4:8, 4:8, 4:8] += 150  # a bright cube marks class 1
        return images, labels.reshape(-1, 1)

    arrays = {}
    for prefix, n in (("train", 40), ("val", 6), ("test", 12)):
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = split(n)
    np.savez(path, **arrays)
    return path


def test_run_pipeline_on_tiny_npz(tmp_path):
    npz = _tiny_npz(tmp_path / "tiny3d.npz")
    out = tmp_path / "out"
    result = run_pipeline(
        npz, out, seeds=(0, 1), epochs=2, batch_size=16,
        extra_overrides=["data.options.spatial_size=[12, 12, 12]", "data.cache=none"],
    )
    # real NIfTI files and a datalist without the npz val split
    nifti = out / "adrenal_nifti"
    assert len(list((nifti / "images").glob("*.nii.gz"))) == 40 + 6 + 12
    base = json.loads((nifti / "datalist_train_test.json").read_text())
    assert "validation" not in base and len(base["training"]) == 40 and len(base["test"]) == 12
    # noise on the training and the validation labels (loading the datalist split the validation items off
    # first); the test labels stay clean
    noisy = json.loads((nifti / "noisy_symmetric0.4_seed0_noisyval.json").read_text())
    assert [it["label"] for it in noisy["test"]] == [it["label"] for it in base["test"]]
    given = {it["id"]: it["label"] for it in base["training"]}
    assert len(noisy["training"]) + len(noisy["validation"]) == 40 and noisy["validation"]
    assert set(noisy["noise"]["splits"]) == {"training", "validation"}
    for split in ("training", "validation"):
        changed = sum(it["label"] != given[it["id"]] for it in noisy[split])
        assert changed == round(noisy["noise"]["actual_rate"][split] * len(noisy[split])) > 0, split
    # one run folder per (method, seed), LiLAW on in one arm only
    summaries = {}
    for m in METHODS:
        for s in (0, 1):
            summary = summaries[(m, s)] = json.loads((out / "adrenal_runs" / f"{m}-seed{s}" / "summary.json").read_text())
            assert summary["lilaw_enabled"] is (m == "lilaw")
            assert summary["epochs"] == 2 and summary["num_items"]["test"] == 12
            assert summary["num_items"]["training"] + summary["num_items"]["validation"] == 40
    # the table: each run's clean-test metric in percent, averaged over the 2 seeds, and the paired
    # LiLAW - CE difference, both read back from the runs' own summary.json
    assert (out / "adrenal_pipeline.md").is_file()
    written = json.loads((out / "adrenal_pipeline.json").read_text())
    assert written["meta"]["seeds"] == [0, 1]
    table = result["table"]
    for which in ("final", "best"):
        pct = {
            m: {k: [100 * summaries[(m, s)][which]["test"][k] for s in (0, 1)] for k in METRICS} for m in METHODS
        }
        for m in METHODS:
            for k in METRICS:
                assert table["methods"][which][m][k]["n"] == 2
                assert table["methods"][which][m][k]["mean"] == pytest.approx(sum(pct[m][k]) / 2)
        for k in METRICS:
            d = table["difference"][which][k]
            paired = [a - b for a, b in zip(pct["lilaw"][k], pct["ce"][k], strict=True)]
            assert d["n"] == 2 and d["mean"] == pytest.approx(sum(paired) / 2)
