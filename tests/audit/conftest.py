"""Run folders for the audit tests.

:func:`make_run_folder`: a tiny run folder whose dynamics the real :class:`DynamicsRecorder`
recorded from FIXED logits (no network), so every number the audit derives can be computed by
hand. Two classes, 16 training and 4 validation items, 3 epochs; ``true = i % 2`` and the
training items in :data:`WRONG` carry the other label.

Logit of the GIVEN label (the other class's logit is 0, so ``p[given] = sigmoid(a)``):

=========================  ========  ========  ========
item                       epoch 1   epoch 2   epoch 3
=========================  ========  ========  ========
correct training item i    2+0.1*(i%5) (the same every epoch: p[given] 0.881 .. 0.917)
wrong training item        -3        0         4     (confidently contradicted, unsure, memorised)
validation item            1         2         0.5   (mean CE 0.313, 0.127, 0.474: best at epoch 2)
=========================  ========  ========  ========

``metrics.csv`` has ``val_loss`` 0.4, 0.6, 0.5 (the end-of-epoch evaluation: best at epoch 1).
The scoring window (``best_val_loss`` on the meta step's validation forwards) is therefore epochs
1-2; the count window (``val_loss_at_least_fraction`` on ``metrics.csv``: best at epoch 1, no
earlier than the first 0.2 of 3 epochs) is epoch 1.

Given labels: class 0 = items 0,2,4,8,10,12,14 (correct) + 1,11 (wrong): 9 items, 2 wrong;
class 1 = items 3,5,7,9,13,15 (correct) + 6 (wrong): 7 items, 1 wrong.

:func:`make_image_datalist` / :func:`tiny_config`: a few small PNGs and a config for REAL
trainings (refine, cross-fitting) of a few seconds each.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
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
HOSTILE_ID = 'img-<b>&"x'  # item 5 (a correctly labelled class-1 item)
WRONG_LOGITS = (-3.0, 0.0, 4.0)
VAL_LOGITS = (1.0, 2.0, 0.5)
METRICS_VAL_LOSS = (0.4, 0.6, 0.5)


def item_id(i: int, ids: Mapping[int, str] | None = None) -> str:
    if ids and i in ids:
        return ids[i]
    return HOSTILE_ID if i == 5 else f"img-{i:02d}"


def wrong_ids(ids: Mapping[int, str] | None = None) -> set[str]:
    return {item_id(i, ids) for i in WRONG}


def given_logit(i: int, epoch: int, learned: bool = True) -> float:
    """The logit of item i's given label at ``epoch`` (see the module docstring)."""
    if not learned:
        return 0.0
    if i >= N_TRAIN:
        return VAL_LOGITS[epoch - 1]
    return WRONG_LOGITS[epoch - 1] if i in WRONG else 2.0 + 0.1 * (i % 5)


def make_run_folder(
    root: Path,
    with_truth: bool = True,
    learned: bool = True,
    record_validation: bool = True,
    val_from_epoch: int = 1,
    with_probs: bool = True,
    ids: Mapping[int, str] | None = None,
    class_names: Sequence[str] = ("normal", "pneumonia"),
    metrics_val_loss: Sequence[float] | None = METRICS_VAL_LOSS,
) -> Path:
    """Writes the run folder (see the module docstring) and returns its path (``root / "run"``).

    Args:
        with_truth: write the noise sidecar (detection figures).
        learned: ``False``: every logit is 0 (an unlearnt network).
        record_validation: record the meta step's validation items (and their loss curve).
        val_from_epoch: the first epoch with meta steps (later than 1: a LiLAW warm-up).
        with_probs: ``False`` writes format-version-1 dynamics (no ``probs`` field).
        ids: item index -> id, replacing the default ids.
        class_names: the datalist's class names.
        metrics_val_loss: ``val_loss`` of ``metrics.csv`` per epoch (``None``: no metrics.csv).
    """
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
        items.append({"id": item_id(i, ids), "image": str(path), "label": int(given[i]), "group": None})
    datalist = {"class_names": list(class_names), "multi_label": False,
                "training": items[:N_TRAIN], "validation": items[N_TRAIN:], "test": []}
    if with_truth:
        with (run / "noise.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "split", "true_label", "noisy_label"])
            for i in sorted(WRONG):
                w.writerow([item_id(i, ids), "training", int(true[i]), int(given[i])])
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
    if metrics_val_loss is not None:
        with (run / "metrics.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "iteration", "train_loss", "val_accuracy", "val_loss"])
            for e, v in enumerate(metrics_val_loss, start=1):
                w.writerow([e, 2 * e, 0.5, 0.75, v])

    # the dynamics, recorded by the real recorder from the fixed logits
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    train_ids = [it["id"] for it in items[:N_TRAIN]]
    val_ids = [it["id"] for it in items[N_TRAIN:]]
    meta = SimpleNamespace(last_val_batch=None, last_val_pred=None, val_loader=None)  # stands in for LiLAWHandler
    rec = DynamicsRecorder(loss, train_ids, run / "dynamics", record_validation=record_validation,
                           val_ids=val_ids if record_validation else None, meta_handler=meta if record_validation else None)
    labels = torch.tensor(given)

    def logits_of(rows: range, epoch: int) -> torch.Tensor:
        z = torch.zeros(len(rows), 2)
        z[torch.arange(len(rows)), labels[list(rows)]] = torch.tensor([given_logit(i, epoch, learned) for i in rows])
        return z

    for epoch in range(1, EPOCHS + 1):
        eng = SimpleNamespace(state=SimpleNamespace(epoch=epoch, iteration=0, batch=None, output=None))
        rec._epoch_started(eng)
        for start in range(0, N_TRAIN, 8):
            rows = range(start, start + 8)
            z = logits_of(rows, epoch)
            eng.state.batch = {"id": [train_ids[i] for i in rows]}
            eng.state.output = {"pred": z}
            if with_probs:
                rec._forward_completed(eng)  # MONAI's FORWARD_COMPLETED: the logits the trainer computed
            loss(z, labels[list(rows)])
            rec(eng)
            if record_validation and epoch >= val_from_epoch:  # the meta step: one pass over the validation items
                vz = logits_of(range(N_TRAIN, N_TRAIN + N_VAL), epoch)
                meta.last_val_batch = {"id": val_ids}
                meta.last_val_pred = vz if with_probs else None
                loss.meta_loss(vz, labels[N_TRAIN:])
        rec._epoch_completed(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))
    if not with_probs:  # what a version-1 recorder wrote
        manifest_path = run / "dynamics" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        assert "probs" not in manifest["fields"]
        manifest["version"] = 1
        manifest_path.write_text(json.dumps(manifest))
    return run


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return make_run_folder(tmp_path)


# ----------------------------------------------------------------------------- real trainings
FLIPS = {1, 6, 11, 16, 21}  # training items of make_image_datalist whose label is flipped


def make_image_datalist(root: Path, n_train: int = 24, n_val: int = 8, n_test: int = 4, id_prefix: str = "") -> Path:
    """Small PNGs (class 0 dark, class 1 bright, 16x16) and a datalist whose training labels in
    :data:`FLIPS` are flipped (recorded in a noise sidecar); returns the datalist's path. Item ids
    are ``f"{id_prefix}{split}-{i:02d}"`` (``split`` tr, va, te)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def item(split: str, i: int) -> dict:
        true = i % 2
        path = root / "images" / f"{split}{i:02d}.png"
        Image.fromarray(rng.normal(60 + 120 * true, 15, (16, 16)).clip(0, 255).astype(np.uint8)).save(path)
        given = 1 - true if split == "tr" and i in FLIPS else true
        return {"id": f"{id_prefix}{split}-{i:02d}", "image": str(path), "label": given, "group": f"{split}-{i:02d}"}

    training = [item("tr", i) for i in range(n_train)]
    with (root / "noise.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "true_label", "noisy_label"])
        for i in sorted(FLIPS):
            w.writerow([f"{id_prefix}tr-{i:02d}", "training", i % 2, 1 - i % 2])
    path = root / "datalist.json"
    path.write_text(json.dumps({
        "class_names": ["dark", "bright"], "noise_sidecar": str(root / "noise.csv"), "training": training,
        "validation": [item("va", i) for i in range(n_val)], "test": [item("te", i) for i in range(n_test)],
    }))
    return path


def tiny_config(datalist: Path, *extra: str) -> dict:
    """The radiology_2d preset, made tiny: 16x16 images, 3 epochs of batches of 8 on the CPU."""
    from lilaw_med.run.config import load_preset_config

    return load_preset_config("radiology_2d.yaml", [
        f"data.datalist={datalist}", "data.sample_data=false", "data.cache=none",
        "data.options.spatial_size=[16,16]", "train.epochs=3", "train.batch_size=8", "train.progress=false",
        "train.device=cpu", "output.tensorboard=false", "output.plots=false", *extra,
    ])


def train_with_decisions(datalist: Path, out: Path, decisions: Path) -> dict:
    """Trains one tiny epoch through ``lilaw-med train --relabel D --exclude D``; returns the new run's
    ``datalist.json``."""
    from lilaw_med.cli import main

    config = out.parent / f"{out.name}_config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(datalist, "train.epochs=1")))
    assert main(["train", "--config", str(config), "-o", str(out), "--relabel", str(decisions),
                 "--exclude", str(decisions)]) == 0
    return json.loads((out / "datalist.json").read_text())
