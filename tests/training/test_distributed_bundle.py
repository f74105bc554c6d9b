"""configs/bundle/multi_gpu_train.yaml: a model-zoo-style classification bundle with the LiLAW
overlay trains under ``torchrun --nproc_per_node 2 -m monai.bundle run`` on CPU (gloo)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import torch

from tests.bundle.fixture_bundle import write_classification_bundle
from tests.torchrun import torchrun_command, torchrun_env

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs" / "bundle"
N_TRAIN, N_VAL, BATCH, EPOCHS = 16, 8, 4, 2


def test_multi_gpu_train_yaml_trains_a_lilaw_bundle_on_two_cpu_processes(tmp_path: Path) -> None:
    root = write_classification_bundle(tmp_path / "bundle", n_train=N_TRAIN, n_val=N_VAL, batch_size=BATCH, max_epochs=EPOCHS)
    files = ["configs/train.json", str(CONFIGS / "lilaw_overlay.yaml"), str(CONFIGS / "multi_gpu_train.yaml")]
    cmd = torchrun_command(
        2, "-m", "monai.bundle", "run", "--config_file", repr(files),
        "--meta_file", "configs/metadata.json", "--bundle_root", str(root),
    )  # fmt: skip
    env = torchrun_env(tmp_path, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # each rank trains on its half: N_TRAIN / (2 ranks * BATCH) iterations per epoch
    iters = {int(m) for m in re.findall(r"Iter: \d+/(\d+)", log)}
    assert iters == {N_TRAIN // (2 * BATCH)}, log[-2000:]
    # the writers/loggers run on rank 0 only: one log line per iteration, not one per rank
    assert len(re.findall(r"Epoch: 1/2, Iter: 1/", log)) == 1, log[-2000:]
    # only rank 0 saved, and the DDP wrapper is not in the saved state
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    lilaw = torch.load(root / "models" / "lilaw.pt", weights_only=True)
    assert lilaw["steps"] == (EPOCHS - 1) * N_TRAIN // (2 * BATCH)  # epoch 1 is the warm-up
    alpha = float(lilaw["weighting"]["alpha"])
    assert alpha != 2.0  # the meta step ran
