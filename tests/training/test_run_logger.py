"""RunLogger: per-iteration and per-epoch files from a hand-driven engine, resume state."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from lilaw_med.handlers.run_logger import RunLogger
from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.run_dir import RunDir


def _drive(logger_: RunLogger, loss: LiLAWLoss, epochs: int = 2, per_epoch: int = 3) -> Engine:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
    target = torch.tensor([0, 0, 1, 1])

    def step(engine: Engine, batch: int) -> dict:
        loss.set_epoch(engine.state.epoch)
        value = loss(logits, target)
        engine.state.metrics["val_auroc"] = 0.5 + 0.1 * engine.state.epoch
        return {"loss": value}

    engine = Engine(step)
    logger_.attach(engine)
    engine.run(range(per_epoch), max_epochs=epochs)
    return engine


def test_rows_hold_the_effective_weights_and_epoch_records(tmp_path) -> None:
    rd = RunDir(tmp_path).create()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=1)
    run_logger = RunLogger(loss, rd, plots=True)
    _drive(run_logger, loss)
    with open(rd.lilaw_iterations, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 7))
    warm, active = rows[:3], rows[3:]
    assert all(float(r["weight_min"]) == 1.0 == float(r["weight_max"]) and r["lilaw_active"] == "0" for r in warm)
    expected = loss.weighting(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]]), torch.tensor([0, 0, 1, 1])).weight
    assert float(active[0]["weight_mean"]) == pytest.approx(expected.mean().item(), rel=1e-5)
    assert float(active[0]["weight_max"]) == pytest.approx(expected.max().item(), rel=1e-5)
    epochs = json.loads(rd.metrics_json.read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[1]["val_auroc"] == pytest.approx(0.7)
    assert epochs[0]["train_loss"] == pytest.approx(nn.functional.cross_entropy(
        torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]]), torch.tensor([0, 0, 1, 1])).item(), rel=1e-5)
    assert len(run_logger.histograms) == 2 and sum(run_logger.histograms[0]) == 12  # 3 batches x 4 weights
    for png in ("losses.png", "metrics.png", "lilaw_scalars.png", "weight_histograms.png"):
        assert (rd.plots / png).is_file()


def test_state_dict_round_trips_through_weights_only_load(tmp_path) -> None:
    rd = RunDir(tmp_path).create()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    first = RunLogger(loss, rd, plots=False)
    _drive(first, loss, epochs=1)
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    second = RunLogger(loss, rd, plots=False)
    second.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(torch.tensor(second.iterations), torch.tensor(first.iterations), equal_nan=True)
    assert second.epochs == first.epochs
    assert second.histograms == first.histograms
