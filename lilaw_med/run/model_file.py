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
        ValueError: one line, when it cannot be loaded (truncated, corrupt, not a torch file, a pickle
            that would run code) or is not a lilaw-med model file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, which would run whatever the file holds: never
        raise ValueError(
            f"{path}: cannot load the model file (UnpicklingError: not a torch file, or it holds objects other "
            "than tensors and plain values, which are never loaded)."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... on truncated or corrupt files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: cannot load the model file ({type(e).__name__}: {first}).") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a lilaw-med model file (it holds a {type(ckpt).__name__}).")
    missing = [k for k in MODEL_FILE_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["network"], Mapping):
        raise ValueError(f"{path}: not a lilaw-med model file (it lacks {missing or ['a network state dict']}).")
    return ckpt


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
