"""Each preset trains from its packaged YAML; the LiLAW switch; reproducibility; the run folder."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml

from lilaw_med.pipelines import pathology_patch, radiology_2d, radiology_3d
from lilaw_med.run.config import validate_config
from lilaw_med.run.run_dir import RunDir
from tests.pipelines.helpers import small_sample_data, tiny_overrides

PIPELINES = {"radiology_2d": radiology_2d, "radiology_3d": radiology_3d, "pathology_patch": pathology_patch}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return small_sample_data(tmp_path_factory.mktemp("sample"))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_each_preset_trains_one_epoch_from_its_yaml(name: str, sample: dict, tmp_path) -> None:
    result = PIPELINES[name].run(output_dir=tmp_path / "run", overrides=tiny_overrides(name, sample))
    s = result.summary
    assert s["epochs"] == 1 and s["iterations"] >= 1
    assert s["lilaw"]["meta_steps"] == s["iterations"]  # one meta step per training batch
    assert (s["lilaw"]["alpha"], s["lilaw"]["beta"], s["lilaw"]["delta"]) != (2.0, 2.0, 2.0)
    val = s["final"]["validation"]
    assert val["n"] > 0 and 0.0 <= val["accuracy"] <= 1.0 and math.isfinite(val["loss"])
    assert len(result.epochs) == 1 and math.isfinite(result.epochs[0]["train_loss"])


def _iteration_rows(run_dir) -> list[dict]:
    with open(RunDir(run_dir).lilaw_iterations, newline="") as f:
        return list(csv.DictReader(f))


def test_baseline_switch_keeps_scalars_at_init_and_weights_at_one(sample: dict, tmp_path) -> None:
    result = radiology_2d.run(
        output_dir=tmp_path / "base", overrides=tiny_overrides("radiology_2d", sample, "lilaw.enabled=false")
    )
    lilaw = result.summary["lilaw"]
    assert (lilaw["alpha"], lilaw["beta"], lilaw["delta"]) == (2.0, 2.0, 2.0)
    assert lilaw["meta_steps"] == 0 and result.summary["lilaw_enabled"] is False
    rows = _iteration_rows(result.run_dir)
    assert rows and all(float(r["weight_min"]) == 1.0 == float(r["weight_max"]) for r in rows)
    assert all(r["lilaw_active"] == "0" for r in rows)


def test_baseline_and_lilaw_in_warmup_train_the_same_network(sample: dict, tmp_path) -> None:
    # everything but the weighting is identical: while LiLAW is in warm-up (no weighting, no meta
    # step) a LiLAW run must produce exactly the baseline's network from the same seed
    base = radiology_2d.run(
        output_dir=tmp_path / "a", overrides=tiny_overrides("radiology_2d", sample, "lilaw.enabled=false")
    )
    warm = radiology_2d.run(
        output_dir=tmp_path / "b", overrides=tiny_overrides("radiology_2d", sample, "lilaw.warmup_epochs=1")
    )
    wa = torch.load(RunDir(base.run_dir).final_model, weights_only=True)["network"]
    wb = torch.load(RunDir(warm.run_dir).final_model, weights_only=True)["network"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_seeded_cpu_runs_are_reproducible_and_seeds_matter(sample: dict, tmp_path) -> None:
    runs = [
        radiology_2d.run(output_dir=tmp_path / name, overrides=tiny_overrides("radiology_2d", sample, f"train.seed={seed}"))
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    a, b, c = (json.loads(RunDir(r.run_dir).metrics_json.read_text())["epochs"] for r in runs)
    assert a == b
    assert a[0]["train_loss"] != c[0]["train_loss"]


def test_run_folder_contains_every_artefact(sample: dict, tmp_path) -> None:
    result = radiology_2d.run(output_dir=tmp_path / "run", overrides=tiny_overrides("radiology_2d", sample))
    rd = RunDir(result.run_dir)
    for path in (rd.config, rd.datalist, rd.metrics_csv, rd.metrics_json, rd.lilaw_iterations, rd.summary,
                 rd.best_model, rd.final_model):
        assert path.is_file(), path
    for png in ("losses.png", "metrics.png", "lilaw_scalars.png", "weight_histograms.png"):
        assert (rd.plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert any(rd.dynamics.iterdir())
    assert any(p.name != "best_model.pt" and p.name != "final_model.pt" for p in rd.checkpoints.iterdir())
    # the resolved config has every default filled in and validates to itself
    saved = yaml.safe_load(rd.config.read_text())
    assert validate_config(saved) == saved
    # the resolved datalist keeps ids, absolute paths and class names
    dl = json.loads(rd.datalist.read_text())
    assert dl["class_names"] and all(it["image"].startswith("/") for it in dl["training"])
    summary = json.loads(rd.summary.read_text())
    assert summary["checkpoints"]["final"] == str(rd.final_model)
    header = rd.lilaw_iterations.read_text().splitlines()[0].split(",")
    assert {"iteration", "alpha", "beta", "delta", "weight_mean"} <= set(header)
    assert len(rd.lilaw_iterations.read_text().splitlines()) == 1 + summary["iterations"]


def test_binary_bce_balanced_sampler_sgd_cosine_and_loss_key_metric_train_end_to_end(sample: dict, tmp_path) -> None:
    extra = ("loss.name=bce", "loss.class_balance=sampler", "optim.name=sgd", "schedule.name=cosine",
             "eval.key_metric=loss", "eval.calibration=temperature", "train.epochs=2")
    result = radiology_2d.run(output_dir=tmp_path / "v", overrides=tiny_overrides("radiology_2d", sample, *extra))
    s = result.summary
    ckpt = torch.load(RunDir(result.run_dir).best_model, weights_only=True)
    assert ckpt["num_outputs"] == 1 and ckpt["key_metric"] == "loss"
    assert s["best_val_metric"] == min(e["val_loss"] for e in result.epochs)
    assert result.epochs[1]["lr"] < result.epochs[0]["lr"]  # cosine decays
    assert s["calibration"]["best"]["temperature"] > 0 and s["lilaw"]["meta_steps"] == s["iterations"]


def test_multi_label_trains_with_per_label_weights(sample: dict, tmp_path) -> None:
    src = json.loads(sample["radiology_2d"].read_text())
    base = sample["radiology_2d"].parent
    ml = {"class_names": ["opacity", "first_view"], "multi_label": True}
    for split in ("training", "validation", "test"):
        ml[split] = [
            {"id": it["id"], "image": str(base / it["image"]), "group": it["group"],
             "label": [int(it["label"]), int(it["id"].endswith("_0.dcm"))]}
            for it in src.get(split, [])
        ]
    path = tmp_path / "ml.json"
    path.write_text(json.dumps(ml))
    extra = ("data.multi_label=true", "loss.name=bce", "eval.calibration=temperature")
    result = radiology_2d.run(output_dir=tmp_path / "r", overrides=tiny_overrides("radiology_2d", {"radiology_2d": path}, *extra))
    s = result.summary
    assert s["lilaw"]["meta_steps"] == s["iterations"] and set(s["final"]["test"]["per_class"]) == {"opacity", "first_view"}
    assert torch.load(RunDir(result.run_dir).final_model, weights_only=True)["num_outputs"] == 2


def test_prior_calibration_is_fitted_on_validation_and_reused_by_evaluate(sample: dict, tmp_path) -> None:
    from lilaw_med.workflows.evaluate import evaluate_run

    overrides = tiny_overrides("pathology_patch", sample, "eval.calibration=prior")
    result = pathology_patch.run(output_dir=tmp_path / "run", overrides=overrides)
    cal = result.summary["calibration"]["final"]
    num_classes = len(result.summary["final"]["test"]["per_class"])
    assert num_classes >= 3 and len(cal["class_bias"]) == num_classes
    assert cal["prior_strength"] in [round(0.1 * i, 1) for i in range(21)] and cal["temperature"] > 0
    # evaluate with the saved calibration reproduces the summary's calibrated test metrics
    report = evaluate_run(result.run_dir, splits="test", which="final", calibrated=True)
    expected = result.summary["final"]["test_calibrated"]
    for key in ("accuracy", "balanced_accuracy", "loss"):
        assert report["splits"]["test"][key] == pytest.approx(expected[key], abs=1e-6), key
    # predict applies the saved bias: a bias of +8 on class 1 makes every prediction class 1, and the
    # calibrated probabilities are softmax(log(uncalibrated) / T + class_bias)
    from lilaw_med.data.presets import get_preset
    from lilaw_med.workflows.predict import predict_inputs

    summary_path = RunDir(result.run_dir).summary
    saved = json.loads(summary_path.read_text())
    bias = [0.0] * num_classes
    bias[1] = 8.0
    for which in ("best", "final"):
        saved["calibration"][which] = {"method": "prior", "temperature": 1.5, "threshold": None, "class_bias": bias}
    summary_path.write_text(json.dumps(saved))
    images = sorted(str(p) for p in sample[get_preset("pathology").sample_key].parent.rglob("*.png"))[:6]
    assert images
    rows = {}
    for calibrated in (False, True):
        out = tmp_path / f"pred_{calibrated}.csv"
        predict_inputs(result.run_dir, images, out, which="best", calibrated=calibrated)
        with open(out, newline="") as f:
            rows[calibrated] = list(csv.DictReader(f))
    cols = [c for c in rows[False][0] if c.startswith("prob_")]
    plain = np.array([[float(r[c]) for c in cols] for r in rows[False]])
    z = np.log(plain) / 1.5 + np.asarray(bias)
    expected_probs = np.exp(z - z.max(axis=1, keepdims=True))
    expected_probs /= expected_probs.sum(axis=1, keepdims=True)
    got = np.array([[float(r[c]) for c in cols] for r in rows[True]])
    np.testing.assert_allclose(got, expected_probs, atol=1e-4)
    assert [int(r["predicted_label"]) for r in rows[True]] == [1] * len(images)
