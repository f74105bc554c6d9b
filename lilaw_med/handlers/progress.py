"""TrainingProgress: a live progress bar on a terminal, one log line per epoch anywhere else."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["TrainingProgress"]

logger = logging.getLogger(__name__)


class TrainingProgress:
    """Shows how a training advances, fit for where its output goes.

    On a terminal, ignite's ``ProgressBar`` (tqdm) redraws one line in place. Anywhere else (a
    pipe, a CI log, a file) every redraw would become a line of its own, thousands of them in a
    short run; there the handler logs ONE line per epoch instead, at INFO on this module's logger:
    the epoch, the mean training loss and the last values of ``values``, and the epoch's time.

    Args:
        values: ``values(engine.state.output)`` -> the numbers to show (e.g. ``{"loss": ...,
            "a": ..., "b": ..., "d": ...}``); ``"loss"`` is averaged over the epoch in the log line.
        stream: where a bar would be drawn (tqdm's default, ``sys.stderr`` when ``None``); a bar is
            used when it is a terminal (``isatty()``).
        desc: the bar's label.
    """

    def __init__(
        self, values: Callable[[Any], Mapping[str, float]], stream: IO[str] | None = None, desc: str = "train"
    ) -> None:
        self.values = values
        self.stream = stream
        self.desc = desc
        self._sum = 0.0
        self._count = 0
        self._last: Mapping[str, float] = {}
        self._started = 0.0

    @property
    def is_terminal(self) -> bool:
        """Whether the stream is an interactive terminal (where a bar redraws in place)."""
        stream = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return bool(isatty()) if callable(isatty) else False

    def attach(self, engine: Engine) -> None:
        """Attaches a ``ProgressBar`` on a terminal, else the per-epoch log line.

        Args:
            engine: the trainer.
        """
        if self.is_terminal:

            ProgressBar(persist=True, desc=self.desc, file=self.stream).attach(engine, output_transform=self.values)
            return
        if engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._sum, self._count, self._last, self._started = 0.0, 0, {}, time.monotonic()

    def _iteration_completed(self, engine: Engine) -> None:
        self._last = dict(self.values(engine.state.output))
        loss = self._last.get("loss")
        if loss is not None and math.isfinite(loss):
            self._sum += loss
            self._count += 1

    def __call__(self, engine: Engine) -> None:
        """Logs the epoch's line.

        Args:
            engine: the trainer.
        """
        shown = {k: v for k, v in self._last.items() if k != "loss"}
        mean = self._sum / self._count if self._count else math.nan
        logger.info(
            "epoch %d/%d: %s loss %.4f%s (%.1f s)",
            engine.state.epoch, engine.state.max_epochs, self.desc, mean,
            "".join(f", {k} {v:.4f}" for k, v in shown.items()), time.monotonic() - self._started,
        )
