"""RunLogger: per-iteration LiLAW statistics and per-epoch metrics to the run folder (CSV, JSON, PNG)."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.run_dir import RunDir
from lilaw_med.utils import atomic_write

__all__ = ["HIST_EDGES", "ITERATION_COLUMNS", "RunLogger"]

logger = logging.getLogger(__name__)

ITERATION_COLUMNS = (
    "epoch", "iteration", "loss", "alpha", "beta", "delta",
    "weight_mean", "weight_std", "weight_min", "weight_max", "lilaw_active", "meta_val_loss",
)
# weights lie in (0, 3): fixed bins make histograms comparable across epochs
HIST_EDGES = np.linspace(0.0, 3.0, 61)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _output_loss(out: Any) -> float | None:
    """The loss in a trainer's output: a mapping's ``"loss"``, a number, or the first mapping of a list."""
    loss_value = _scalar(out.get("loss")) if isinstance(out, Mapping) else _scalar(out)
    if loss_value is None and isinstance(out, list) and out and isinstance(out[0], Mapping):
        loss_value = _scalar(out[0].get("loss"))
    return loss_value


def _epochs_csv(epochs: list[dict[str, Any]]) -> str:
    """``metrics.csv``: one row per epoch, the columns in the order they first appear."""
    columns: list[str] = []
    for record in epochs:
        columns += [k for k in record if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in epochs:
        writer.writerow({k: _fmt(v) for k, v in record.items()})
    return buf.getvalue()


def _iterations_csv(iterations: list[list[float]]) -> str:
    """``lilaw_iterations.csv``: :data:`ITERATION_COLUMNS`, epoch, iteration and the active flag as integers."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ITERATION_COLUMNS)
    for row in iterations:
        w.writerow([int(v) if i in (0, 1, 10) else _fmt(v) for i, v in enumerate(row)])
    return buf.getvalue()


class RunLogger:
    """Writes a training run's statistics into its run folder.

    Per iteration (``ITERATION_COMPLETED``): the training loss, alpha, beta, delta (after the meta
    step when the LiLAW handler was attached first), and the statistics of the EFFECTIVE per-sample
    weights of the batch (all 1 while the weighting is off: warm-up or the baseline); rewritten to
    ``lilaw_iterations.csv`` at every epoch end. Per epoch (``EPOCH_COMPLETED``): the mean training
    loss, learning rate, LiLAW scalars and every scalar in ``engine.state.metrics`` whose name
    starts with one of ``metric_prefixes`` (the builder's validation handler, attached before this
    one, puts ``val_*``/``test_*`` there), to ``metrics.csv`` and ``metrics.json``; plots of losses,
    metrics, alpha/beta/delta and the weight histograms per epoch to ``plots/*.png``. The experiment
    trackers (TensorBoard, MLflow: :mod:`lilaw_med.handlers.tracking`) read :attr:`iterations`,
    :attr:`epochs` and :attr:`histograms` after it.

    Args:
        loss: the trainer's :class:`LiLAWLoss` (its ``last_stats``/``last_loss`` and scalars are read).
        run_dir: the run folder.
        optimizer: read for the learning rate (first parameter group).
        plots: write PNG plots at every epoch end.
        metric_prefixes: prefixes of ``engine.state.metrics`` entries logged per epoch.
    """

    def __init__(
        self,
        loss: LiLAWLoss,
        run_dir: RunDir,
        optimizer: torch.optim.Optimizer | None = None,
        plots: bool = True,
        metric_prefixes: tuple[str, ...] = ("val_", "test_"),
    ) -> None:
        if not isinstance(loss, LiLAWLoss):
            raise TypeError(f"loss must be a LiLAWLoss but is {type(loss).__name__}.")
        self.loss = loss
        self.run_dir = run_dir
        self.optimizer = optimizer
        self.plots = bool(plots)
        self.metric_prefixes = tuple(metric_prefixes)
        self.iterations: list[list[float]] = []
        self.epochs: list[dict[str, Any]] = []
        self.histograms: list[list[int]] = []  # one row of counts per epoch over HIST_EDGES
        self._epoch_losses: list[float] = []
        self._epoch_hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)

    # ---------------------------------------------------------------- wiring
    def attach(self, engine: Engine) -> None:
        """Registers on ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED`` (attach after the LiLAW and
        validation handlers so their values of the same event are visible, and before the trackers)."""
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    # ---------------------------------------------------------------- events
    def iteration_completed(self, engine: Engine) -> None:
        """Records the iteration's loss, scalars and effective weight statistics."""
        loss_value = _output_loss(engine.state.output)
        scalars = self.loss.weighting.as_dict()
        active = self.loss.is_active
        w_np = self._effective_weights(active)
        self._epoch_hist += np.histogram(np.clip(w_np, 0, 3), bins=HIST_EDGES)[0]
        meta = engine.state.metrics.get("lilaw_val_loss", float("nan")) if active else float("nan")
        row = [
            float(engine.state.epoch), float(engine.state.iteration), float("nan") if loss_value is None else loss_value,
            scalars["alpha"], scalars["beta"], scalars["delta"],
            float(w_np.mean()), float(w_np.std()), float(w_np.min()), float(w_np.max()), float(active), float(meta),
        ]
        self.iterations.append(row)
        if loss_value is not None and math.isfinite(loss_value):
            self._epoch_losses.append(loss_value)

    def _effective_weights(self, active: bool) -> np.ndarray:
        """The last batch's weights as the model step used them (all 1 during warm-up)."""
        stats = self.loss.last_stats
        if stats is not None and active:
            return stats.weight.detach().float().reshape(-1).cpu().numpy()
        return torch.ones(stats.weight.numel() if stats is not None else 1).numpy()

    def __call__(self, engine: Engine) -> None:
        """Epoch end: appends the epoch's record and rewrites every file."""
        epoch = engine.state.epoch
        record = self._epoch_record(engine)
        self.epochs = [e for e in self.epochs if e["epoch"] != epoch] + [record]
        self.histograms = self.histograms[: epoch - 1] + [self._epoch_hist.tolist()]
        self._epoch_losses = []
        self._epoch_hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
        self.write()

    def _epoch_record(self, engine: Engine) -> dict[str, Any]:
        """The epoch's row of ``metrics.json``: mean training loss, learning rate, LiLAW scalars, mean
        weight and the validation/test metrics found under :attr:`metric_prefixes`."""
        epoch = engine.state.epoch
        record: dict[str, Any] = {
            "epoch": epoch,
            "iteration": engine.state.iteration,
            "train_loss": float(np.mean(self._epoch_losses)) if self._epoch_losses else float("nan"),
        }
        if self.optimizer is not None:
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record.update(self.loss.weighting.as_dict())
        rows = [r for r in self.iterations if int(r[0]) == epoch]
        if rows:
            record["weight_mean"] = float(np.mean([r[6] for r in rows]))
        for key, value in engine.state.metrics.items():
            if key.startswith(self.metric_prefixes):
                v = _scalar(value)
                if v is not None:
                    record[key] = v
        return record

    # ---------------------------------------------------------------- files
    def write(self) -> None:
        """Rewrites ``metrics.csv``, ``metrics.json``, ``lilaw_iterations.csv`` and the plots."""
        atomic_write(self.run_dir.metrics_csv, _epochs_csv(self.epochs))
        self.run_dir.write_json(self.run_dir.METRICS_JSON, {"epochs": self.epochs})
        atomic_write(self.run_dir.lilaw_iterations, _iterations_csv(self.iterations))
        if self.plots:
            try:
                self.write_plots()
            except Exception as e:  # a plotting problem must never stop training
                logger.warning("could not write plots: %s", e)

    def write_plots(self) -> None:
        """Writes ``losses.png``, ``metrics.png``, ``lilaw_scalars.png`` and ``weight_histograms.png``."""
        # matplotlib (about half a second) loads when plots are written, with the Agg backend chosen before pyplot
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        def save(fig: Any, name: str) -> None:
            out = io.BytesIO()
            fig.tight_layout()
            fig.savefig(out, format="png", dpi=90)
            plt.close(fig)
            atomic_write(self.run_dir.plots / name, out.getvalue())

        save(self._epoch_curves(plt, ("train_loss", "val_loss", "test_loss"), "loss", "Losses"), "losses.png")
        metrics = ("val_accuracy", "val_balanced_accuracy", "val_auroc", "test_accuracy", "test_auroc")
        save(self._epoch_curves(plt, metrics, "metric", "Metrics (validation split is noisy)"), "metrics.png")
        save(self._scalar_curves(plt), "lilaw_scalars.png")
        save(self._weight_histograms(plt), "weight_histograms.png")

    def _epoch_curves(self, plt: Any, keys: Sequence[str], ylabel: str, title: str) -> Any:
        """A figure of the per-epoch values of ``keys`` (those with a finite value)."""
        epochs = [e["epoch"] for e in self.epochs]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            ys = [e.get(key, float("nan")) for e in self.epochs]
            if any(math.isfinite(y) for y in ys):
                ax.plot(epochs, ys, marker="o", label=key)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.legend(loc="best")
        return fig

    def _scalar_curves(self, plt: Any) -> Any:
        """A figure of alpha, beta and delta per iteration."""
        arr = np.asarray(self.iterations, dtype=np.float64).reshape(-1, len(ITERATION_COLUMNS))
        fig, ax = plt.subplots(figsize=(6, 4))
        for j, name in ((3, "alpha"), (4, "beta"), (5, "delta")):
            ax.plot(arr[:, 1], arr[:, j], label=name)
        ax.set(xlabel="iteration", ylabel="value", title="LiLAW alpha, beta, delta")
        ax.legend(loc="best")
        return fig

    def _weight_histograms(self, plt: Any) -> Any:
        """A figure of each epoch's histogram of effective weights, coloured by epoch."""
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(6, 4))
        cmap = plt.get_cmap("viridis")
        n = max(len(self.histograms), 1)
        for i, counts in enumerate(self.histograms):
            c = np.asarray(counts, dtype=np.float64)
            if c.sum() > 0:
                ax.stairs(c / c.sum(), HIST_EDGES, color=cmap(i / max(n - 1, 1)), label=f"epoch {i + 1}")
        ax.set(xlabel="per-sample weight w", ylabel="fraction of samples", title="LiLAW weights per epoch")
        # a colour bar reads at any number of epochs, where a legend stops fitting after ten
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, max(n, 2)))
        fig.colorbar(mappable, ax=ax, label="epoch").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        return fig

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything logged so far (tensors and plain values, ``weights_only``-loadable)."""
        return {
            "iterations": torch.tensor(self.iterations, dtype=torch.float64).reshape(-1, len(ITERATION_COLUMNS)),
            "epochs": [{k: v for k, v in e.items()} for e in self.epochs],
            "histograms": torch.tensor(self.histograms, dtype=torch.int64).reshape(-1, len(HIST_EDGES) - 1),
            "epoch_losses": torch.tensor(self._epoch_losses, dtype=torch.float64),
            "epoch_hist": torch.from_numpy(self._epoch_hist.copy()),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved.

        Raises:
            KeyError: when a key is missing.
        """
        missing = {"iterations", "epochs", "histograms"} - set(state_dict)
        if missing:
            raise KeyError(f"RunLogger state_dict is missing {sorted(missing)}.")
        self.iterations = torch.as_tensor(state_dict["iterations"]).tolist()
        self.epochs = [dict(e) for e in state_dict["epochs"]]
        self.histograms = torch.as_tensor(state_dict["histograms"]).tolist()
        self._epoch_losses = torch.as_tensor(state_dict.get("epoch_losses", torch.zeros(0))).tolist()
        hist = state_dict.get("epoch_hist")
        self._epoch_hist = (
            torch.as_tensor(hist).numpy().astype(np.int64) if hist is not None else np.zeros(len(HIST_EDGES) - 1, np.int64)
        )


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value
