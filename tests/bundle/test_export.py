"""`lilaw-med bundle export`: export -> train with monai.bundle -> verify -> TorchScript, on tiny data.

The data are 48 grey 16x16 PNG images (two classes, a third of the labels flipped) read through
the real ``radiology_2d`` preset; a 2-epoch ``small_cnn`` run of the CLI is the reference.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lilaw_med import __version__
from lilaw_med.bundle.metadata import missing_metadata_keys, verify_metadata_schema
from lilaw_med.cli import main
from lilaw_med.networks import build_network
from tests.bundle.fixture_bundle import write_images
from tests.bundle.schema import metadata_schemas

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:parsing config_file")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CLI training run of a tiny config and the bundle exported from it."""
    root = tmp_path_factory.mktemp("bundle_export")
    rng = np.random.default_rng(0)
    datalist = {
        split: write_images(root / "images", n, rng, split) for split, n in (("training", 32), ("validation", 8), ("test", 8))
    }
    datalist["class_names"] = ["plain", "square"]
    (root / "datalist.json").write_text(json.dumps(datalist))
    config = {
        "data": {"preset": "radiology_2d", "datalist": str(root / "datalist.json"), "cache": "none",
                 "options": {"spatial_size": [16, 16]}},
        "model": {"network": "small_cnn"},
        "train": {"epochs": 2, "batch_size": 8, "seed": 3, "device": "cpu", "progress": False},
        "eval": {"calibration": "threshold"},
        "output": {"plots": False, "tensorboard": False},
    }
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = root / "cli_run"
    assert main(["train", "--config", str(config_path), "--output", str(run), "--no-progress"]) == 0
    bundle = root / "bundle"
    assert main(["bundle", "export", "--config", str(config_path), "--run", str(run), str(bundle)]) == 0
    return {"root": root, "config": config_path, "run": run, "bundle": bundle}


def _monai_bundle(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=300
    )


def test_export_writes_a_complete_bundle_with_the_runs_weights(exported: dict[str, Path]) -> None:
    bundle = exported["bundle"]
    for rel in ("configs/metadata.json", "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
                "configs/multi_gpu_train.yaml", "configs/logging.conf", "docs/README.md", "LICENSE", "models/model.pt"):
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert missing_metadata_keys(meta) == []
    assert meta["required_packages_version"]["lilaw-med"] == __version__
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["spatial_shape"]) == (1, [16, 16])
    assert (pred["num_channels"], pred["channel_def"]) == (2, {"0": "plain", "1": "square"})
    for schema in metadata_schemas():  # MONAI's verify_metadata, offline
        verify_metadata_schema(bundle / "configs/metadata.json", schema)
    summary = json.loads((exported["run"] / "summary.json").read_text())
    assert meta["eval_metrics"]["test_auroc"] == pytest.approx(summary["best"]["test"]["auroc"])
    # the configs output the plain softmax; the run's calibration is recorded and explained
    cal = summary["calibration"]["best"]
    assert meta["lilaw_med_calibration"] == {"method": "threshold", "temperature": cal["temperature"],
                                             "threshold": cal["threshold"]}
    assert f"at least {cal['threshold']:.4g}" in (bundle / "docs/README.md").read_text()

    train = yaml.safe_load((bundle / "configs/train.yaml").read_text())
    assert train["network_def"]["_target_"] == "lilaw_med.networks.build_network"
    assert train["training"]["_target_"] == "lilaw_med.training.run.run_training"
    assert train["lilaw_config"]["lilaw"]["enabled"] is True

    best = torch.load(exported["run"] / "checkpoints" / "best_model.pt", weights_only=True)["network"]
    installed = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert installed.keys() == best.keys()
    assert all(torch.equal(installed[k], best[k]) for k in best)


def test_monai_bundle_applies_the_bundles_logging_conf(exported: dict[str, Path]) -> None:
    # MONAI's ConfigWorkflow (what `monai.bundle run` builds) applies configs/logging.conf itself and
    # warns "Default logging file ... does not exist" without it; in a subprocess, because it
    # reconfigures the root logger
    code = (
        "import logging; from monai.bundle import ConfigWorkflow; "
        "ConfigWorkflow(config_file='configs/inference.yaml', meta_file='configs/metadata.json', workflow_type='infer'); "
        "logging.getLogger('lilaw_med.check').info('logged')"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=exported["bundle"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "does not exist" not in out.stdout + out.stderr
    assert "lilaw_med.check - INFO - logged" in out.stdout


def test_monai_bundle_run_trains_with_lilaw_exactly_like_the_cli(exported: dict[str, Path]) -> None:
    bundle, cli_run = exported["bundle"], exported["run"]
    out = bundle / "runs" / "check"
    proc = _monai_bundle(
        bundle, "run", "--config_file", "configs/train.yaml", "--meta_file", "configs/metadata.json",
        "--output_dir", str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress and the final metrics through the bundle's logging.conf (stdout), as monai.bundle shows them
    assert re.search(r"epoch 1/2: train loss \d", proc.stdout), proc.stdout[-2000:]
    assert re.search(r"final metrics: best validation: auroc \d.*; LiLAW alpha \d", proc.stdout), proc.stdout[-2000:]
    # per-iteration alpha/beta/delta, losses and weights, and per-epoch metrics: identical
    assert (out / "lilaw_iterations.csv").read_text() == (cli_run / "lilaw_iterations.csv").read_text()
    assert (out / "metrics.csv").read_text() == (cli_run / "metrics.csv").read_text()
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out, cli_run))
    # 2 epochs of 4 iterations; the first is the warm-up (no meta steps)
    assert ours["lilaw"] == theirs["lilaw"] and ours["lilaw"]["meta_steps"] == 4
    assert ours["lilaw"]["alpha"] != 2.0
    assert ours["best"] == theirs["best"]
    a = torch.load(out / "checkpoints" / "best_model.pt", weights_only=True)["network"]
    b = torch.load(cli_run / "checkpoints" / "best_model.pt", weights_only=True)["network"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    installed = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(installed[k], a[k]) for k in a)


def test_verify_net_in_out_passes_and_torchscript_matches_the_checkpoint(exported: dict[str, Path]) -> None:
    from monai.bundle import ckpt_export, verify_net_in_out

    bundle = exported["bundle"]
    meta, infer = str(bundle / "configs/metadata.json"), str(bundle / "configs/inference.yaml")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=infer, device="cpu")
    ts_path = bundle / "models" / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts_path), ckpt_file=str(bundle / "models/model.pt"), meta_file=meta,
        config_file=infer, bundle_root=str(bundle),
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]["num_channels"] == 2

    net = build_network("small_cnn", 2, 1, 2)
    net.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    net.eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-6)


def test_evaluate_config_reproduces_the_runs_test_metrics(exported: dict[str, Path], monkeypatch) -> None:
    from monai.bundle.scripts import create_workflow

    bundle = exported["bundle"]
    monkeypatch.setattr(sys, "path", list(sys.path))
    workflow = create_workflow(
        config_file=str(bundle / "configs/evaluate.yaml"), meta_file=str(bundle / "configs/metadata.json"),
        logging_file=False, bundle_root=str(bundle), output_dir=str(bundle / "eval"),
    )
    workflow.run()
    workflow.finalize()
    metrics = dict(csv.reader((bundle / "eval" / "metrics.csv").open()))
    test = json.loads((exported["run"] / "summary.json").read_text())["best"]["test"]
    assert float(metrics["auroc"]) == pytest.approx(test["auroc"], abs=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(test["accuracy"], abs=1e-6)


def test_inference_config_writes_class_probabilities_per_file(exported: dict[str, Path], monkeypatch) -> None:
    from monai.bundle.scripts import create_workflow

    bundle = exported["bundle"]
    images = exported["root"] / "predict"
    images.mkdir()
    for src in sorted((exported["root"] / "images").glob("test_00[0-2].png")):
        (images / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(sys, "path", list(sys.path))
    workflow = create_workflow(
        config_file=str(bundle / "configs/inference.yaml"), meta_file=str(bundle / "configs/metadata.json"),
        logging_file=False, bundle_root=str(bundle), dataset_dir=str(images), output_dir=str(bundle / "pred"),
    )
    workflow.run()
    workflow.finalize()
    rows = list(csv.reader((bundle / "pred" / "predictions.csv").open()))
    assert [r[0] for r in rows] == ["test_000.png", "test_001.png", "test_002.png"]
    for row in rows:
        probs = [float(v) for v in row[1:]]
        assert len(probs) == 2 and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_export_refuses_a_non_empty_folder_and_a_folder_that_is_no_run(
    exported: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    config = str(exported["config"])
    assert main(["bundle", "export", "--config", config, str(exported["bundle"])]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["bundle", "export", "--config", config, "--run", str(exported["root"]), str(exported["root"] / "b2")]) == 1
    assert "not a lilaw-med run folder" in capsys.readouterr().err


def test_overlay_command_copies_the_packaged_overlay(tmp_path: Path) -> None:
    assert main(["bundle", "overlay", "-o", str(tmp_path)]) == 0
    written = tmp_path / "lilaw_overlay.yaml"
    packaged = Path(__file__).resolve().parents[2] / "configs" / "bundle" / "lilaw_overlay.yaml"
    assert written.read_text() == packaged.read_text()
    assert main(["bundle", "overlay", "-o", str(written)]) == 1  # no silent overwrite


def test_verify_command_checks_keys_and_network_and_names_what_is_missing(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LILAW_BUNDLE_SCHEMA", raising=False)
    assert main(["bundle", "verify", str(exported["bundle"])]) == 0
    out = capsys.readouterr().out
    assert "every mandatory key" in out and "schema check skipped" in out and "match the metadata" in out

    broken = tmp_path / "broken"
    (broken / "configs").mkdir(parents=True)
    meta = json.loads((exported["bundle"] / "configs/metadata.json").read_text())
    del meta["authors"]
    (broken / "configs/metadata.json").write_text(json.dumps(meta))
    assert main(["bundle", "verify", str(broken)]) == 1
    assert "missing mandatory key(s) authors" in capsys.readouterr().err


def test_multi_gpu_override_runs_the_same_training_on_this_processs_device(exported: dict[str, Path]) -> None:
    from monai.bundle import ConfigParser

    from lilaw_med.training.distributed import DistributedContext

    configs = exported["bundle"] / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml"), str(configs / "multi_gpu_train.yaml")])
    raw = parser.get()
    assert "$import lilaw_med.training.distributed" in raw["imports"]  # merged, not replaced
    assert raw["training"]["_target_"] == "lilaw_med.training.run.run_training"
    context = parser.get_parsed_content("distributed")  # no torchrun variables here: one process
    assert isinstance(context, DistributedContext) and context.world_size == 1
    assert parser.get_parsed_content("training#device") == "cpu"
    assert parser.get_parsed_content("lilaw_config#train#device") == "cpu"


def test_export_from_a_run_alone_uses_the_runs_config_and_warns_when_another_differs(
    exported: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = exported["run"]
    assert main(["bundle", "export", "--run", str(run), str(tmp_path / "a")]) == 0
    embedded = yaml.safe_load((tmp_path / "a" / "configs/train.yaml").read_text())["lilaw_config"]
    assert embedded["train"]["epochs"] == 2 and embedded["train"]["seed"] == 3
    assert not [r for r in caplog.records if "differs from the run" in r.getMessage()]

    args = ["bundle", "export", "--config", str(exported["config"]), "--set", "train.epochs=5", "--run", str(run)]
    with caplog.at_level("WARNING", logger="lilaw_med.bundle.source"):
        assert main([*args, str(tmp_path / "b")]) == 0
    warnings = [r.getMessage() for r in caplog.records if "differs from the run" in r.getMessage()]
    assert len(warnings) == 1 and "train.epochs" in warnings[0]


def test_export_from_another_folder_reads_the_run_folder_and_writes_nothing_there(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = exported["run"]
    assert main(["bundle", "export", "--run", os.path.relpath(run, elsewhere), str(tmp_path / "b")]) == 0
    assert list(elsewhere.iterdir()) == []  # no sample data, no cache, nothing resolved against this folder
    embedded = yaml.safe_load((tmp_path / "b" / "configs/train.yaml").read_text())["lilaw_config"]
    assert embedded["data"]["datalist"] == str((run / "datalist.json").absolute())
    shipped = json.loads((tmp_path / "b" / "configs/datalist.json").read_text())
    trained = json.loads((run / "datalist.json").read_text())
    assert [it["id"] for it in shipped["test"]] == [it["id"] for it in trained["test"]]
    assert all(not Path(it["image"]).is_absolute() for split in ("training", "test") for it in shipped[split])


def test_a_moved_bundle_evaluates_with_a_dataset_dir_override(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai.bundle.scripts import create_workflow

    # the bundle and the images copied elsewhere (another machine): only --dataset_dir names the images
    bundle = shutil.copytree(exported["bundle"], tmp_path / "moved_bundle")
    shutil.copytree(exported["root"] / "images", tmp_path / "new_place" / "images")
    evaluate = yaml.safe_load((bundle / "configs/evaluate.yaml").read_text())
    assert evaluate["dataset_dir"] == str(exported["root"] / "images")
    monkeypatch.setattr(sys, "path", list(sys.path))
    workflow = create_workflow(
        config_file=str(bundle / "configs/evaluate.yaml"), meta_file=str(bundle / "configs/metadata.json"),
        logging_file=False, bundle_root=str(bundle), dataset_dir=str(tmp_path / "new_place" / "images"),
    )
    datalist = workflow.parser.get_parsed_content("datalist")
    assert all(it["image"].startswith(str(tmp_path / "new_place")) for it in datalist.test)
    workflow.run()
    workflow.finalize()
    metrics = dict(csv.reader((bundle / "eval" / "metrics.csv").open()))
    test = json.loads((exported["run"] / "summary.json").read_text())["best"]["test"]
    assert float(metrics["auroc"]) == pytest.approx(test["auroc"], abs=1e-6)

    missing = create_workflow(
        config_file=str(bundle / "configs/evaluate.yaml"), meta_file=str(bundle / "configs/metadata.json"),
        logging_file=False, bundle_root=str(bundle), dataset_dir=str(tmp_path / "nowhere"),
    )
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error of a config expression
        missing.parser.get_parsed_content("datalist")
    assert isinstance(info.value.__cause__, FileNotFoundError) and "--dataset_dir" in str(info.value.__cause__)
