"""Preset pipeline: Radiology 2D: CR / DX / US / MG grey images (DICOM, PNG, TIFF, 2D NIfTI), small CNN or MONAI ResNet/DenseNet/EfficientNet in 2D.

A thin preset over :mod:`lilaw_med.training.builder`: its config is the packaged
``lilaw_med/configs/radiology_2d.yaml`` (copy it with ``lilaw-med init-config radiology_2d -o my.yaml``).

Example:
    >>> from lilaw_med.pipelines import radiology_2d
    >>> result = radiology_2d.run(overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lilaw_med.pipelines._preset import Preset
from lilaw_med.training.builder import RunResult, TrainingComponents

__all__ = ["CONFIG_FILE", "DATA_PRESET", "build", "default_config", "run"]

CONFIG_FILE = "radiology_2d.yaml"
DATA_PRESET = "radiology_2d"
_PRESET = Preset(CONFIG_FILE, DATA_PRESET)


def default_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The preset's validated config (the packaged YAML with ``--set``-style overrides)."""
    return _PRESET.config(overrides)


def build(config: Mapping[str, Any] | None = None, overrides: Sequence[str] = (), **kwargs: Any) -> TrainingComponents:
    """Builds the MONAI components of the preset (see :func:`lilaw_med.training.builder.build_components`)."""
    return _PRESET.build(config, overrides, **kwargs)


def run(
    config: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    **kwargs: Any,
) -> RunResult:
    """Trains the preset and writes its run folder (see :func:`lilaw_med.training.builder.run_training`)."""
    return _PRESET.run(config, output_dir, overrides, **kwargs)
