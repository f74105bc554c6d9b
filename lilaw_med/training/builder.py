"""The training entry points under the name they were first published with.

Their code lives by job: :mod:`lilaw_med.training.data` (``prepare_datalist``,
``transform_options``), :mod:`lilaw_med.training.model` (``load_model``),
:mod:`lilaw_med.training.trainer` (``build_components``) and :mod:`lilaw_med.training.run`
(``run_training``). This module only re-exports them, because bundles exported before that split
name ``lilaw_med.training.builder.run_training`` in their ``train.yaml`` and must keep running.
"""

from __future__ import annotations

from lilaw_med.training.data import prepare_datalist, transform_options
from lilaw_med.training.model import load_model
from lilaw_med.training.run import RunResult, run_training
from lilaw_med.training.trainer import TrainingComponents, build_components

__all__ = [
    "RunResult",
    "TrainingComponents",
    "build_components",
    "load_model",
    "prepare_datalist",
    "run_training",
    "transform_options",
]
