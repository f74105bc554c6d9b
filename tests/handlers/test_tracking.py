"""Experiment tracking (output.tracking): the run logger's values through MONAI's TensorBoard and MLflow handlers."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from ignite.engine import Engine
from torch import nn

import lilaw_med.handlers.tracking as tracking
from lilaw_med.cli import main
from lilaw_med.handlers.run_logger import RunLogger
from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.run_dir import RunDir
from tests.pipelines.helpers import small_sample_data, tiny_overrides


def test_backends_follow_output_tensorboard_and_add_the_named_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"tensorboard": False, "mlflow": True}
    monkeypatch.setattr(tracking, "_installed", lambda name: installed[name])
    assert tracking.tracking_backends(None, "auto") == []  # today's default without tensorboard installed
    assert tracking.tracking_backends("mlflow", "auto") == ["mlflow"]
    installed["tensorboard"] = True
    assert tracking.tracking_backends(None, "auto") == ["tensorboard"]
    assert tracking.tracking_backends(["mlflow"], False) == ["mlflow"]
    assert tracking.tracking_backends(["mlflow", "tensorboard"], False) == ["tensorboard", "mlflow"]
    with pytest.raises(ValueError, match="unknown tracker 'wandb'; choose from tensorboard, mlflow"):
        tracking.tracking_backends(["wandb"])
    installed["mlflow"] = False
    with pytest.raises(ValueError, match=r"mlflow is not installed \(pip install 'lilaw-med\[tracking\]'\)"):
        tracking.tracking_backends("mlflow")


def _drive(run_logger: RunLogger, loss: LiLAWLoss, rd: RunDir, backends: list[str], epochs: int = 1) -> None:
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]]), torch.tensor([0, 0, 1, 1])

    def step(engine: Engine, batch: int) -> dict:
        value = loss(logits, target)
        engine.state.metrics["val_auroc"] = 0.5 + 0.1 * engine.state.epoch
        return {"loss": value}

    engine = Engine(step)
    run_logger.attach(engine)
    tracking.attach_tracking(engine, run_logger, rd, backends)
    engine.run(range(3), max_epochs=epochs)


def test_tensorboard_gets_the_run_loggers_scalars_through_monais_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monai.handlers.tensorboard_handlers as tb

    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append(("scalar", tag, round(float(value), 6), step))

        def add_histogram(self, tag: str, values, step: int) -> None:
            calls.append(("hist", tag, len(values), step))

        def flush(self) -> None: ...

        def close(self) -> None:
            calls.append(("close",))

    monkeypatch.setattr(tb, "SummaryWriter", FakeWriter)
    monkeypatch.setattr(tb, "_tb_available", True)
    rd = RunDir(tmp_path).create()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"))
    _drive(RunLogger(loss, rd, plots=False), loss, rd, ["tensorboard"])
    assert calls[0] == ("init", str(rd.tensorboard))
    assert ("scalar", "lilaw/alpha", round(loss.weighting.as_dict()["alpha"], 6), 3) in calls
    assert ("scalar", "epoch/val_auroc", 0.6, 1) in calls
    assert ("hist", "lilaw/weights", 12, 1) in calls and calls[-1] == ("close",)  # 3 batches x 4 weights


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install 'lilaw-med[tracking]')")
def test_mlflow_records_one_tiny_epoch_in_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sample = small_sample_data(tmp_path / "sample")
    out = tmp_path / "run"
    args = ["train", "--config", str(importlib.resources.files("lilaw_med.configs").joinpath("radiology_2d.yaml")),
            "-o", str(out)]
    for s in [*tiny_overrides("radiology_2d", sample), "output.plots=false", "output.tracking=[mlflow]"]:
        args += ["--set", s]
    assert main(args) == 0
    store = out / tracking.MLRUNS / "mlflow.db"
    assert store.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs(client.get_experiment_by_name("lilaw-med").experiment_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    metrics = (out / "metrics.csv").read_text().splitlines()
    header, first = metrics[0].split(","), metrics[1].split(",")
    val_auroc = float(first[header.index("val_auroc")])
    assert run.data.metrics["epoch.val_auroc"] == pytest.approx(val_auroc, abs=1e-6)
    iterations = client.get_metric_history(run.info.run_id, "lilaw.alpha")
    assert [m.step for m in iterations] == list(range(1, len(iterations) + 1)) and len(iterations) > 1
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert run.data.params["network"] == config["model"]["network"] and run.data.params["epochs"] == "1"
