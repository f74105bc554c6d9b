"""benchmarks.adrenal_pipeline on a tiny synthetic 3D npz: NIfTI files, noise, two trainings per seed, the table."""

from __future__ import annotations

import json
import math

import numpy as np

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
    # noise on training labels only; the test labels stay clean
    noisy = json.loads((nifti / "noisy_symmetric0.4_seed0.json").read_text())
    assert [it["label"] for it in noisy["test"]] == [it["label"] for it in base["test"]]
    assert any(a["label"] != b["label"] for a, b in zip(noisy["training"], base["training"], strict=True))
    # one run folder per (method, seed), LiLAW on in one arm only
    for m in METHODS:
        for s in (0, 1):
            summary = json.loads((out / "adrenal_runs" / f"{m}-seed{s}" / "summary.json").read_text())
            assert summary["lilaw_enabled"] is (m == "lilaw")
            assert summary["epochs"] == 2 and summary["num_items"]["test"] == 12
            assert summary["num_items"]["training"] + summary["num_items"]["validation"] == 40
    # the table: every metric in [0, 100] for both models, paired differences over 2 seeds
    assert (out / "adrenal_pipeline.md").is_file()
    written = json.loads((out / "adrenal_pipeline.json").read_text())
    assert written["meta"]["seeds"] == [0, 1]
    table = result["table"]
    for which in ("final", "best"):
        for m in METHODS:
            for k in METRICS:
                assert 0.0 <= table["methods"][which][m][k]["mean"] <= 100.0
                assert table["methods"][which][m][k]["n"] == 2
        for k in METRICS:
            d = table["difference"][which][k]
            assert d["n"] == 2 and math.isfinite(d["mean"]) and -100.0 <= d["mean"] <= 100.0
