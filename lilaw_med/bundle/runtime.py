"""What an exported bundle's configs call at run time, by dotted path (``$lilaw_med.bundle.runtime.f(...)``).

``train.yaml`` installs the trained weights (:func:`install_model`) and logs the final metrics
(:func:`log_final_metrics`); ``evaluate.yaml`` reads the shipped datalist under ``--dataset_dir``
(:func:`load_bundle_datalist`). Their names and arguments are part of every exported bundle: change
them only with a new name.

Example (what ``train.yaml``'s ``run`` list does)::

    result = run_training(lilaw_config, "runs/train")
    install_model(result, "models/model.pt")
    log_final_metrics(result)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lilaw_med.data.datalist import load_datalist
from lilaw_med.run.model_file import model_file, read_model_file
from lilaw_med.utils import atomic_save_torch

__all__ = ["install_model", "load_bundle_datalist", "log_final_metrics"]

logger = logging.getLogger(__name__)


def install_model(run_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Writes a run's best network weights (else its final ones) as a plain state dict: the
    ``models/model.pt`` that MONAI's ``CheckpointLoader`` and ``ckpt_export`` read.

    Args:
        run_dir: a finished run folder, or the :class:`~lilaw_med.training.run.RunResult` of one.
        dest: the destination file.

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: when it cannot be loaded (one line).
    """
    run_dir = getattr(run_dir, "run_dir", run_dir)  # a RunResult from the bundle's training step
    ckpt = read_model_file(model_file(Path(run_dir)))
    atomic_save_torch({k: v.detach().cpu() for k, v in ckpt["network"].items()}, dest)
    logger.info("installed the network weights of %s as %s", run_dir, dest)
    return Path(dest)


def log_final_metrics(result: Any) -> None:
    """Logs one line with the final metrics of a bundle's training run (the last step of
    ``train.yaml``; ``monai.bundle run`` shows it through ``configs/logging.conf``). Ranks other
    than 0 of a distributed run have no summary and log nothing.

    Args:
        result: the :class:`~lilaw_med.training.run.RunResult` of the ``training`` component.
    """
    summary = getattr(result, "summary", None) or {}
    if not summary:
        return
    parts = []
    for which in ("best", "final"):
        for split, metrics in (summary.get(which) or {}).items():
            values = _figures(metrics, ("auroc", "accuracy"))
            if values:
                parts.append(f"{which} {split}: {values}")
    scalars = _figures(summary.get("lilaw") or {}, ("alpha", "beta", "delta"))
    logger.info(
        "final metrics: %s%s; run folder %s", "; ".join(parts) or "none",
        f"; LiLAW {scalars}" if scalars else "", getattr(result, "run_dir", "?"),
    )


def _figures(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``"key 0.1234, ..."`` for the ``keys`` whose value is a float."""
    return ", ".join(f"{k} {values[k]:.4f}" for k in keys if isinstance(values.get(k), float))


def load_bundle_datalist(path: str | os.PathLike, dataset_dir: str | os.PathLike, lilaw_config: Mapping[str, Any]) -> Any:
    """Reads a bundle's ``configs/datalist.json`` with its image paths under ``dataset_dir``.

    Args:
        path: the bundle's datalist.
        dataset_dir: the folder the images' relative paths start from (``--dataset_dir``).
        lilaw_config: the embedded config (class names, multi-label).

    Returns:
        The :class:`~lilaw_med.data.datalist.Datalist`.

    Raises:
        FileNotFoundError: when ``dataset_dir`` is not a folder (the message names the override).
    """
    if not Path(dataset_dir).is_dir():
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} is not a folder: pass --dataset_dir with the folder that holds the images "
            "(the paths in configs/datalist.json are relative to it)."
        )
    data = lilaw_config["data"]
    return load_datalist(path, class_names=data.get("class_names"), multi_label=bool(data.get("multi_label")),
                         base_dir=dataset_dir, strict=False)
