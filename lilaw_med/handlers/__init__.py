"""Ignite handlers, one per module: the LiLAW meta step, the dynamics recorder, atomic
checkpoints, the non-finite loss guard, the run-folder logger and the progress display."""

from lilaw_med.handlers.checkpoint import CheckpointHandler
from lilaw_med.handlers.dynamics import DynamicsRecorder
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.handlers.nonfinite import NonFiniteLossError, NonFiniteLossHandler
from lilaw_med.handlers.progress import TrainingProgress

__all__ = [
    "CheckpointHandler",
    "DynamicsRecorder",
    "LiLAWHandler",
    "NonFiniteLossError",
    "NonFiniteLossHandler",
    "TrainingProgress",
]
