"""A finished run ready for inference: the config, network, calibration, class names and evaluation chain.

:func:`~lilaw_med.workflows.evaluate.evaluate_run` and :func:`~lilaw_med.workflows.predict.predict_inputs`
both start from one :class:`TrainedRun`, so a model is always read with its own config, device rule,
calibration and evaluation transforms.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from torch import nn

from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.summary import NO_CALIBRATION, RunSummary
from lilaw_med.run.transforms import evaluation_transforms
from lilaw_med.training.devices import resolve_device
from lilaw_med.training.model import load_model

__all__ = ["TrainedRun"]


@dataclass
class TrainedRun:
    """One model of a run folder, loaded for inference.

    Example::

        run = TrainedRun.load("runs/radiology_2d-20260101-120000", which="best", device="cpu")
        loader = run.loader([{"image": "x.png", "id": "x"}], batch_size=16)

    Attributes:
        run_dir: the run folder.
        config: the run's resolved config.
        network: the network, in eval mode, on ``device``.
        meta: the model file's metadata (``path``, ``epoch``, ``num_outputs``, ``spatial_dims``,
            ``class_names``, ...).
        device: where the network runs.
        which: ``"best"`` or ``"final"``.
        summary: the run's ``summary.json`` (empty when it has none).
    """

    run_dir: RunDir
    config: Config
    network: nn.Module
    meta: dict[str, Any]
    device: torch.device
    which: str
    summary: RunSummary = field(default_factory=RunSummary)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, which: str = "best", device: str | None = None) -> TrainedRun:
        """Reads a run folder's config and model.

        Args:
            run_dir: the run folder.
            which: ``"best"`` (falls back to final) or ``"final"``.
            device: overrides the run's ``train.device``.

        Returns:
            The loaded run.

        Raises:
            FileNotFoundError: when the folder is not a run folder or has no model.
            ValueError: on a model file that cannot be loaded.
        """
        rd = RunDir(run_dir)
        if not rd.exists():
            raise FileNotFoundError(f"{rd.root} is not a run folder ({RunDir.CONFIG} is missing).")
        cfg = Config.from_mapping(rd.read_config())
        dev = resolve_device(device or cfg.train.device)
        network, meta = load_model(rd.root, which, dev)
        return cls(rd, cfg, network, meta, dev, which, RunSummary.read(rd.root))

    @property
    def multi_label(self) -> bool:
        """Whether the run's task is multi-label."""
        return bool(self.config.data.multi_label)

    @property
    def spatial_dims(self) -> int:
        """The network's spatial dimensions (2 or 3)."""
        return int(self.meta.get("spatial_dims", 2))

    @property
    def output_names(self) -> list[str]:
        """One name per probability column: the class names (``"0"``, ``"1"``, ... when the model file
        has none that fit), two for a single binary logit."""
        num = int(self.meta.get("num_outputs", 2))
        num = 2 if num == 1 and not self.multi_label else num
        names = list(self.meta.get("class_names") or [])
        return names if len(names) == num else [str(i) for i in range(num)]

    def calibration(self, calibrated: bool = True) -> dict[str, Any]:
        """The calibration fitted for this model during training (``summary.json``), else none.

        Args:
            calibrated: ``False`` gives no calibration whatever was fitted.

        Returns:
            ``{"method", "temperature", "threshold", ...}`` of this model (``which``), the final
            model's when the run fitted none for it, or ``{"method": "none", ...}``.
        """
        return self.summary.calibration(self.which) if calibrated else dict(NO_CALIBRATION)

    def transforms(self) -> Any:
        """The run's evaluation transform chain (a MONAI ``Compose``; its first transform loads)."""
        return evaluation_transforms(self.config)

    def loader(self, items: Sequence[dict[str, Any]], batch_size: int, num_workers: int = 0) -> Any:
        """A MONAI ``DataLoader`` over ``items`` through :meth:`transforms`, in order.

        Args:
            items: data items (``{"image", "id", ...}``).
            batch_size: items per batch.
            num_workers: loader worker processes.

        Returns:
            The loader.
        """

        return DataLoader(
            Dataset(list(items), self.transforms()), batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
