"""``torchrun --nproc_per_node 2 -m lilaw_med train`` end to end on CPU (gloo): rank 0 alone writes
the run folder, the ranks split every epoch, and the dynamics hold each item exactly once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.torchrun import torchrun_command, torchrun_env
from tests.write_audit import write_audit_env, writes_by_rank

REPO_ROOT = Path(__file__).resolve().parents[2]
N = {"training": 23, "validation": 8, "test": 8}  # 23: the sampler pads one item (seen twice)
ITERS_PER_EPOCH = 3  # ceil(ceil(23 / 2 ranks) / 4)
BATCH, EPOCHS, WORLD_SIZE = 4, 2, 2


def _write_data(folder: Path) -> Path:
    """Tiny PNG images (a bright square means class 1) and a datalist with all three splits."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    datalist: dict[str, list[dict]] = {}
    for split, n in N.items():
        datalist[split] = []
        for i in range(n):
            label = i % 2
            img = rng.integers(0, 60, (16, 16), dtype=np.uint8)
            if label:
                img[4:12, 4:12] += 150
            path = folder / f"{split}_{i:03d}.png"
            Image.fromarray(img).save(path)
            datalist[split].append({"image": str(path), "label": label})
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


@pytest.fixture(scope="module")
def ddp_cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp_cli")
    datalist = _write_data(tmp / "data")
    run_root = tmp / "runs"
    config = {
        "data": {"preset": "radiology_2d", "datalist": str(datalist), "options": {"spatial_size": [16, 16]}, "cache": "none"},
        "model": {"network": "small_cnn"},
        "lilaw": {"warmup_epochs": 0},  # meta steps and validation dynamics from the first iteration
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "progress": False, "device": "cpu"},
        "eval": {"calibration": "none"},
        "output": {"dir": str(run_root), "name": "ddp"},
    }
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    base = {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env = write_audit_env(tmp, run_root, torchrun_env(tmp, base))
    cmd = torchrun_command(WORLD_SIZE, "-m", "lilaw_med", "train", "--config", str(tmp / "tiny.yaml"))
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    return {"proc": proc, "run_dir": run_root / "ddp", "writes": writes_by_rank(tmp, WORLD_SIZE)}


def test_torchrun_train_succeeds_and_reports_once(ddp_cli_run: dict) -> None:
    proc = ddp_cli_run["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("run folder:") == 1, proc.stdout
    summary = json.loads((ddp_cli_run["run_dir"] / "summary.json").read_text())
    # each rank trains on its half of every epoch (12 items: 11 or 12 of its own, padded to 12)
    assert summary["iterations"] == EPOCHS * ITERS_PER_EPOCH
    assert summary["lilaw"]["meta_steps"] == summary["iterations"]


def test_only_rank0_writes_the_run_folder(ddp_cli_run: dict) -> None:
    writes = ddp_cli_run["writes"]
    assert writes[0] is not None and writes[1] is not None, "the write-audit hook did not run in the ranks"
    assert any("summary.json" in w for w in writes[0]) and any("dynamics" in w for w in writes[0])
    assert writes[1] == [], f"rank 1 wrote into the run folder: {writes[1][:10]}"
    for name in ("config.yaml", "datalist.json", "metrics.csv", "lilaw_iterations.csv", "dynamics/manifest.json"):
        assert (ddp_cli_run["run_dir"] / name).is_file(), name


def test_dynamics_record_each_item_exactly_once_per_epoch(ddp_cli_run: dict) -> None:
    from lilaw_med.run.dynamics_format import load_dynamics

    train = load_dynamics(ddp_cli_run["run_dir"], "training")
    assert len(train.ids) == len(set(train.ids)) == N["training"]
    assert train.epochs == list(range(1, EPOCHS + 1))
    # every item recorded in every epoch; the 24 training slots hold 23 items, one of them twice
    counts = train["count"]
    assert (counts >= 1).all() and (counts <= 2).all()
    np.testing.assert_array_equal(counts.sum(axis=1), ITERS_PER_EPOCH * WORLD_SIZE * BATCH)
    assert not np.isnan(train["prob_label"]).any()
    val = load_dynamics(ddp_cli_run["run_dir"], "validation")
    assert len(val.ids) == len(set(val.ids)) == N["validation"]
    # every meta batch of every rank was recorded: 3 iterations x 2 ranks x 4 items per epoch over 8 items
    np.testing.assert_array_equal(val["count"].sum(axis=1), ITERS_PER_EPOCH * WORLD_SIZE * BATCH)



def test_audit_table_of_a_ddp_run_has_each_item_once(ddp_cli_run: dict, tmp_path: Path) -> None:
    from lilaw_med.workflows.audit import run_audit

    result = run_audit(ddp_cli_run["run_dir"], tmp_path / "audit", thumbnails=False, final_model_baseline=False)
    for split in ("training", "validation"):
        ids = [row["id"] for row in result.rows if row["split"] == split]
        assert len(ids) == len(set(ids)) == N[split], split
    assert {int(row["epochs_seen"]) for row in result.rows if row["split"] == "training"} == {EPOCHS}
