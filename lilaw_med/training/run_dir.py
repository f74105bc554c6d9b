"""The run folder: one place that owns every file name of a training run (see docs/ARCHITECTURE.md).

```
RUN_DIR/
  config.yaml            resolved config (every default filled in)
  datalist.json          resolved items with ids, absolute paths, given labels, class_names
  metrics.csv / .json    per-epoch metrics (train loss, val/test metrics, lilaw scalars)
  lilaw_iterations.csv   per-iteration alpha, beta, delta, weight stats
  plots/*.png            losses, metrics, alpha/beta/delta, weight histograms per epoch
  checkpoints/           atomic checkpoints (last + best), checkpoint index
  dynamics/              per-item training dynamics (DynamicsRecorder)
  rejected_items.csv     items the pre-flight check rejected (with --skip-bad)
  tensorboard/           when tensorboard is installed
  summary.json           final metrics, best checkpoint, paths
  evaluation.json        written by `lilaw-med evaluate`
  audit/                 written by `lilaw-med audit`
```

Every write goes through :func:`lilaw_med.utils.atomic_write`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lilaw_med.utils import atomic_write

__all__ = ["RunDir", "default_run_name", "to_jsonable"]


def default_run_name(preset: str) -> str:
    """``PRESET-YYYYmmdd-HHMMSS`` (UTC), the default name of a run folder."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def to_jsonable(value: Any) -> Any:
    """Converts tensors/arrays/paths/NaN to plain JSON values (NaN and inf become ``None``)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """Paths of a run folder and atomic writers for its files.

    Args:
        root: the run folder (created by :meth:`create`).
    """

    CONFIG = "config.yaml"
    DATALIST = "datalist.json"
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    LILAW_ITERATIONS = "lilaw_iterations.csv"
    PLOTS = "plots"
    CHECKPOINTS = "checkpoints"
    DYNAMICS = "dynamics"
    REJECTED = "rejected_items.csv"
    TENSORBOARD = "tensorboard"
    SUMMARY = "summary.json"
    EVALUATION = "evaluation.json"
    AUDIT = "audit"
    BEST_MODEL = "best_model.pt"
    FINAL_MODEL = "final_model.pt"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def datalist(self) -> Path:
        return self.root / self.DATALIST

    @property
    def metrics_csv(self) -> Path:
        return self.root / self.METRICS_CSV

    @property
    def metrics_json(self) -> Path:
        return self.root / self.METRICS_JSON

    @property
    def lilaw_iterations(self) -> Path:
        return self.root / self.LILAW_ITERATIONS

    @property
    def plots(self) -> Path:
        return self.root / self.PLOTS

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def best_model(self) -> Path:
        """Network weights of the best epoch by the key metric (plus metadata)."""
        return self.checkpoints / self.BEST_MODEL

    @property
    def final_model(self) -> Path:
        """Network weights at the end of training (plus metadata)."""
        return self.checkpoints / self.FINAL_MODEL

    @property
    def dynamics(self) -> Path:
        return self.root / self.DYNAMICS

    @property
    def rejected(self) -> Path:
        return self.root / self.REJECTED

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def evaluation(self) -> Path:
        """The report of ``lilaw-med evaluate`` (by default)."""
        return self.root / self.EVALUATION

    @property
    def audit(self) -> Path:
        return self.root / self.AUDIT

    # ------------------------------------------------------------------ life cycle
    def create(self, overwrite: bool = False) -> RunDir:
        """Creates the folder (and ``plots/``, ``checkpoints/``).

        Args:
            overwrite: allow an existing non-empty folder.

        Returns:
            ``self``.

        Raises:
            FileExistsError: when the folder holds files and ``overwrite`` is false.
            OSError: when it cannot be created or is not writable.
        """
        if self.root.exists() and any(self.root.iterdir()) and not overwrite:
            raise FileExistsError(
                f"run folder {self.root} exists and is not empty: choose another --output, set "
                "output.overwrite=true, or continue it with --resume."
            )
        for folder in (self.root, self.plots, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"run folder {self.root} is not writable.")
        return self

    def exists(self) -> bool:
        """Whether this looks like a run folder (it has a ``config.yaml``)."""
        return self.config.is_file()

    # ------------------------------------------------------------------ writers
    def write_json(self, name: str | Path, data: Any) -> Path:
        """Writes ``data`` as indented JSON (NaN -> null) atomically under the run folder."""
        return atomic_write(self.root / name, json.dumps(to_jsonable(data), indent=2) + "\n")

    def read_json(self, name: str | Path) -> Any:
        """Reads a JSON file of the run folder."""
        return json.loads((self.root / name).read_text(encoding="utf-8"))

    def write_config(self, config: Mapping[str, Any] | Any) -> Path:
        """Writes the resolved config (a mapping or a :class:`~lilaw_med.training.config.Config`) as YAML."""
        from lilaw_med.training.config import dump_config

        return atomic_write(self.config, dump_config(config))

    def read_config(self) -> dict[str, Any]:
        """Reads ``config.yaml`` (safe-loaded).

        Raises:
            FileNotFoundError: when the folder is not a run folder.
        """
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: {self.CONFIG} is missing.")
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
