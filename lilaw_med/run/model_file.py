"""A run's model file (``best_model.pt`` / ``final_model.pt``): reading it safely, and which one a run's
"best" model is.

Only the file: the network is built from it in :func:`lilaw_med.training.model.load_model`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lilaw_med.errors import InputError, one_line
from lilaw_med.run.run_dir import RunDir

__all__ = ["MODEL_FILE_KEYS", "MODELS", "model_file", "read_model_file"]

MODELS = ("best", "final")
"""The models of a run: ``"best"`` (by the validation key metric; the final one when none was saved)
and ``"final"``."""


MODEL_FILE_KEYS = ("network", "network_name", "spatial_dims", "in_channels", "num_outputs")
"""What a run's ``best_model.pt``/``final_model.pt`` must hold to rebuild its network."""


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a run's model file (``best_model.pt``/``final_model.pt``) with ``weights_only=True``.

    Args:
        path: the file.

    Returns:
        Its content: the network's state dict under ``"network"`` and the metadata of :func:`lilaw_med.training.model.checkpoint_meta`.

    Raises:
        FileNotFoundError: when it does not exist.
        InputError: one line, when it cannot be loaded (truncated, corrupt, not a torch file, a pickle
            that would run code) or is not a lilaw-med model file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    ckpt = _load(path)
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: not a lilaw-med model file (it holds a {type(ckpt).__name__}).")
    missing = [k for k in MODEL_FILE_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["network"], Mapping):
        raise InputError(f"{path}: not a lilaw-med model file (it lacks {missing or ['a network state dict']}).")
    return ckpt


def _load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``; any failure as one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, which would run whatever the file holds: never
        raise InputError(
            f"{path}: cannot load the model file (UnpicklingError: not a torch file, or it holds objects other "
            "than tensors and plain values, which are never loaded)."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... on truncated or corrupt files
        raise InputError(
            f"{path}: cannot load the model file ({one_line(e, limit=200, with_type=True)})."
        ) from None


def model_file(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """The model file of a run: ``best_model.pt``, else ``final_model.pt`` (``which="best"``), or
    ``final_model.pt`` (``which="final"``).

    Args:
        run_dir: the run folder.
        which: one of :data:`MODELS`.

    Returns:
        The path of an existing model file.

    Raises:
        ValueError: on an unknown ``which``.
        FileNotFoundError: when the run has no such model file.

    Example::

        ckpt = read_model_file(model_file("runs/first"))   # the best model, else the final one
    """
    if which not in MODELS:
        raise ValueError(f"which must be 'best' or 'final' but is {which!r}.")
    rd = RunDir(run_dir)
    path = rd.best_model if which == "best" and rd.best_model.is_file() else rd.final_model
    if not path.is_file():
        raise FileNotFoundError(
            f"{rd.root}: no model checkpoint ({RunDir.CHECKPOINTS}/{RunDir.BEST_MODEL} or {RunDir.FINAL_MODEL}); "
            "is it a finished lilaw-med run folder?"
        )
    return path
