"""Experiment tracking (``output.tracking``): the run logger's values to TensorBoard and MLflow through
MONAI's handlers (``TensorBoardStatsHandler``, ``MLFlowHandler``), on rank 0 only.

The :class:`~lilaw_med.handlers.run_logger.RunLogger` computes every value once (the iteration's
loss, alpha, beta, delta; the epoch's record: training loss, learning rate, LiLAW scalars,
validation/test metrics; the weight histogram); the trackers write what it has just recorded, so
they must be attached after it. TensorBoard writes ``RUN_DIR/tensorboard``; MLflow needs no server:
a SQLite store and the artifacts in ``RUN_DIR/mlruns`` (MLflow 3 refuses the plain file store;
``MLFLOW_TRACKING_URI`` set in the environment sends the run to that server instead).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from lilaw_med.errors import InputError
from lilaw_med.handlers.run_logger import HIST_EDGES, ITERATION_COLUMNS, RunLogger
from lilaw_med.run.run_dir import RunDir

__all__ = ["MLRUNS", "TRACKERS", "attach_tracking", "tracking_backends"]

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow")
"""The experiment trackers ``output.tracking`` may name."""

MLRUNS = "mlruns"
"""The folder of the run folder that holds MLflow's store (``mlflow.db``) and artifacts."""

_COLUMN = {name: i for i, name in enumerate(ITERATION_COLUMNS)}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _tracker_names(tracking: str | Sequence[str] | None) -> list[str]:
    """``output.tracking`` as a list of known, installed trackers' names."""
    names = [tracking] if isinstance(tracking, str) else list(tracking or [])
    for name in names:
        if name not in TRACKERS:
            raise InputError(f"output.tracking: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}.")
    if "mlflow" in names and not _installed("mlflow"):
        raise InputError("output.tracking names mlflow but mlflow is not installed (pip install 'lilaw-med[tracking]').")
    return names


def tracking_backends(tracking: str | Sequence[str] | None, tensorboard: bool | str = "auto") -> list[str]:
    """The trackers a run logs to, from ``output.tracking`` and ``output.tensorboard``.

    ``output.tensorboard`` keeps its meaning (``auto``: TensorBoard when it is installed; ``true``:
    TensorBoard, with a warning when it is not installed); ``output.tracking`` adds trackers by name
    (naming ``tensorboard`` there is ``output.tensorboard: true``).

    Example::

        tracking_backends(["mlflow"], tensorboard=False)  # -> ["mlflow"]

    Args:
        tracking: a tracker's name, a list of them, or ``None``.
        tensorboard: ``output.tensorboard``.

    Returns:
        The trackers, in the order of :data:`TRACKERS`.

    Raises:
        InputError: for an unknown name, or ``mlflow`` when mlflow is not installed.
    """
    names = _tracker_names(tracking)
    wants_tensorboard = "tensorboard" in names or tensorboard is True
    if wants_tensorboard and not _installed("tensorboard"):
        logger.warning("TensorBoard logging asked for but tensorboard is not installed (pip install tensorboard).")
    chosen = set(names)
    if (wants_tensorboard or tensorboard == "auto") and _installed("tensorboard"):
        chosen.add("tensorboard")
    else:
        chosen.discard("tensorboard")
    return [name for name in TRACKERS if name in chosen]


def _iteration_scalars(run_logger: RunLogger) -> dict[str, float]:
    """The newest iteration's loss and LiLAW scalars, under TensorBoard's tags."""
    row = run_logger.iterations[-1]
    scalars = {f"lilaw/{name}": float(row[_COLUMN[name]]) for name in ("alpha", "beta", "delta")}
    loss = row[_COLUMN["loss"]]
    if math.isfinite(loss):
        scalars["train/loss_iteration"] = float(loss)
    return scalars


def _epoch_scalars(run_logger: RunLogger) -> dict[str, float]:
    """The newest epoch's finite values (training loss, lr, LiLAW scalars, metrics), tagged ``epoch/...``."""
    record = run_logger.epochs[-1]
    return {
        f"epoch/{key}": value for key, value in record.items()
        if key not in ("epoch", "iteration") and isinstance(value, float) and math.isfinite(value)
    }


def _tensorboard(run_logger: RunLogger, run_dir: RunDir) -> Any:
    # optional: tensorboard is needed only where output.tracking asks for it
    from monai.handlers import TensorBoardStatsHandler

    def iteration(engine: Engine, writer: Any) -> None:
        for tag, value in _iteration_scalars(run_logger).items():
            writer.add_scalar(tag, value, engine.state.iteration)

    def epoch(engine: Engine, writer: Any) -> None:
        for tag, value in _epoch_scalars(run_logger).items():
            writer.add_scalar(tag, value, engine.state.epoch)
        counts = np.asarray(run_logger.histograms[-1])
        if counts.sum() > 0:
            centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
            writer.add_histogram("lilaw/weights", np.repeat(centers, counts), engine.state.epoch)
        writer.flush()

    return TensorBoardStatsHandler(
        log_dir=str(run_dir.tensorboard), iteration_event_writer=iteration, epoch_event_writer=epoch
    )


def _mlflow(run_logger: RunLogger, run_dir: RunDir, params: Mapping[str, Any]) -> Any:
    # optional: mlflow is needed only where output.tracking asks for it
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_uri

    class RunLoggerMLFlow(MLFlowHandler):
        """MONAI's MLflow handler logging the run logger's values (tags as in TensorBoard, ``/`` -> ``.``)."""

        def _default_iteration_log(self, engine: Engine) -> None:
            scalars = {k.replace("/", "."): v for k, v in _iteration_scalars(run_logger).items()}
            self._log_metrics(scalars, step=engine.state.iteration)

        def _default_epoch_log(self, engine: Engine) -> None:
            scalars = {k.replace("/", "."): v for k, v in _epoch_scalars(run_logger).items()}
            self._log_metrics(scalars, step=engine.state.epoch)

    folder = run_dir.root / MLRUNS
    folder.mkdir(parents=True, exist_ok=True)
    return RunLoggerMLFlow(
        tracking_uri=f"sqlite:///{(folder / 'mlflow.db').absolute()}",
        artifact_location=path_to_uri(folder / "artifacts"),
        experiment_name="lilaw-med",
        run_name=run_dir.root.name,
        experiment_param=dict(params),
        close_on_complete=True,
    )


def attach_tracking(
    engine: Engine, run_logger: RunLogger, run_dir: RunDir, backends: Sequence[str],
    params: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Attaches one MONAI tracking handler per backend; call it on rank 0, after ``run_logger`` is attached.

    Example::

        attach_tracking(trainer, run_logger, run_dir, tracking_backends(["mlflow"]), {"network": "resnet18"})

    Args:
        engine: the trainer.
        run_logger: the run's logger (already attached: its values of an event come first).
        run_dir: the run folder.
        backends: from :func:`tracking_backends`.
        params: run parameters MLflow records once (config values).

    Returns:
        The handlers, attached (TensorBoard's closed when the run completes, MLflow's run ended).
    """
    handlers = []
    for name in backends:
        if name == "tensorboard":
            handler = _tensorboard(run_logger, run_dir)
            handler.attach(engine)
            engine.add_event_handler(Events.COMPLETED, lambda _engine, h=handler: h.close())
        else:
            handler = _mlflow(run_logger, run_dir, params or {})
            handler.attach(engine)
        handlers.append(handler)
    return handlers
