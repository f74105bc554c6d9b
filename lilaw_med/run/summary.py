"""A finished run's ``summary.json``, read once, and the rule for which calibration goes with which model.

:func:`lilaw_med.training.summary.finish_run` writes the file; evaluation and prediction
(:class:`lilaw_med.workflows.trained_run.TrainedRun`), the bundle exporter and the command line's
summary read it through :class:`RunSummary`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lilaw_med.run.model_file import MODELS
from lilaw_med.run.run_dir import RunDir

__all__ = ["NO_CALIBRATION", "RunSummary"]

NO_CALIBRATION: dict[str, Any] = {"method": "none", "temperature": 1.0, "threshold": None}
"""The calibration of a model for which training fitted none (probabilities as the network gives them)."""


@dataclass(frozen=True)
class RunSummary:
    """The content of a run's ``summary.json``.

    Example::

        summary = RunSummary.read("runs/first")
        summary.calibration("best")          # what evaluate, predict and the bundle apply
        summary.results("best")["test"]      # the best model's test metrics (the final one's without a best model)

    Attributes:
        data: the file's content (``{}`` when the run has none, e.g. an interrupted run).
    """

    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunSummary:
        """Reads ``RUN_DIR/summary.json``; an empty summary when the run wrote none.

        Args:
            run_dir: the run folder.

        Returns:
            The summary.
        """
        rd = RunDir(run_dir)
        return cls(rd.read_json(RunDir.SUMMARY) if rd.summary.is_file() else {})

    def _model(self, which: str, table: Mapping[str, Any]) -> Any:
        if which not in MODELS:
            raise ValueError(f"which must be 'best' or 'final' but is {which!r}.")
        # a run without a best model (no validation improvement saved) reads the final model's
        return (table.get("best") if which == "best" else None) or table.get("final")

    def calibration(self, which: str = "best") -> dict[str, Any]:
        """The calibration training fitted for a model: the one that goes with the model file
        :func:`lilaw_med.run.model_file.model_file` gives for ``which``.

        Args:
            which: ``"best"`` (the final model's when training fitted none for a best model) or ``"final"``.

        Returns:
            ``{"method", "temperature", "threshold", ...}``, or :data:`NO_CALIBRATION`.

        Raises:
            ValueError: on an unknown ``which``.
        """
        return dict(self._model(which, self.data.get("calibration") or {}) or NO_CALIBRATION)

    def results(self, which: str = "best") -> dict[str, Any]:
        """The metrics of a model per split (``{"validation": ..., "test": ..., "test_calibrated": ...}``),
        by the same rule as :meth:`calibration`.

        Args:
            which: ``"best"`` or ``"final"``.

        Returns:
            The metrics (``{}`` when the run recorded none).
        """
        return dict(self._model(which, self.data) or {})
