"""A tiny run folder for the audit tests: a few PNG images, a datalist with a noise sidecar, a
config, LiLAW iterations and dynamics recorded by the real DynamicsRecorder from fixed logits."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from lilaw_med import LiLAWLoss
from lilaw_med.handlers.dynamics import DynamicsRecorder

N_TRAIN, N_VAL, EPOCHS = 16, 4, 3
WRONG = {1, 6, 11}  # training items whose given label is wrong
HOSTILE_ID = 'img-<b>&"x'


def _item_id(i: int) -> str:
    return HOSTILE_ID if i == 5 else f"img-{i:02d}"


def make_run_folder(root: Path, with_truth: bool = True, learned: bool = True) -> Path:
    rng = np.random.default_rng(0)
    run = root / "run"
    (root / "images").mkdir(parents=True)
    run.mkdir()
    true = np.array([i % 2 for i in range(N_TRAIN + N_VAL)])
    given = true.copy()
    for i in WRONG:
        given[i] = 1 - true[i]
    items = []
    for i in range(N_TRAIN + N_VAL):
        path = root / "images" / f"case{i:02d}.png"
        base = 60 + 120 * true[i]
        Image.fromarray((rng.normal(base, 20, (16, 16))).clip(0, 255).astype(np.uint8)).save(path)
        items.append({"id": _item_id(i), "image": str(path), "label": int(given[i]), "group": None})
    datalist = {"class_names": ["normal", "pneumonia"], "multi_label": False,
                "training": items[:N_TRAIN], "validation": items[N_TRAIN:], "test": []}
    if with_truth:
        with (run / "noise.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "split", "true_label", "noisy_label"])
            for i in WRONG:
                w.writerow([_item_id(i), "training", int(true[i]), int(given[i])])
        datalist["noise_sidecar"] = str(run / "noise.csv")
    (run / "datalist.json").write_text(json.dumps(datalist))
    config = {"data": {"preset": "radiology_2d", "datalist": str(run / "datalist.json"),
                       "options": {"spatial_size": [16, 16]}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with (run / "lilaw_iterations.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "iteration", "loss", "alpha", "beta", "delta"])
        for it in range(1, 7):
            w.writerow([1 + (it - 1) // 2, it, 0.5, 2 + 0.01 * it, 2 - 0.01 * it, 2 + 0.02 * it])

    # dynamics: the wrong labels get low s[y] early, then are memorised
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"))
    ids = [it["id"] for it in items[:N_TRAIN]]
    rec = DynamicsRecorder(loss, ids, run / "dynamics", record_validation=False)
    labels = torch.tensor(given[:N_TRAIN])
    for epoch in range(1, EPOCHS + 1):
        eng = SimpleNamespace(state=SimpleNamespace(epoch=epoch, iteration=0, batch=None, output=None))
        rec._epoch_started(eng)
        agree = torch.tensor([(-2.0 + epoch if i in WRONG else 2.0 + 0.1 * (i % 5)) for i in range(N_TRAIN)])
        logits = torch.zeros(N_TRAIN, 2)
        logits[torch.arange(N_TRAIN), labels] = agree if learned else 0.0
        for start in range(0, N_TRAIN, 8):
            sl = slice(start, start + 8)
            loss(logits[sl], labels[sl])
            eng.state.batch = {"id": ids[sl]}
            rec(eng)
        rec._epoch_completed(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))
    return run


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return make_run_folder(tmp_path)
