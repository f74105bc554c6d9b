"""``lilaw-med audit``: the audit of a run folder, with the parts that run a network.

The audit itself (:mod:`lilaw_med.audit`) reads files only; :func:`run_audit` adds what needs the
training engine: the out-of-fold probabilities of ``--folds`` (:func:`~lilaw_med.workflows.crossfit.cross_fit`)
and the final model's self-confidence baseline (:func:`~lilaw_med.workflows.crossfit.item_probabilities`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.audit.core import AuditOptions
from lilaw_med.audit.record import RunRecord
from lilaw_med.audit.report import AuditResult, write_audit
from lilaw_med.workflows.crossfit import cross_fit, item_probabilities

__all__ = ["run_audit"]


def run_audit(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    options: AuditOptions | None = None,
    **overrides: Any,
) -> AuditResult:
    """Audits a run folder and writes the audit files (:class:`~lilaw_med.audit.report.AuditFiles`).

    Args:
        run_dir: the run folder (``datalist.json``, ``dynamics/``, ``metrics.csv``).
        out_dir: where to write (default ``RUN_DIR/audit``).
        options: the :class:`AuditOptions` (defaults when ``None``).
        **overrides: fields of :class:`AuditOptions` to change (``run_audit(run, folds=4)``).

    Returns:
        The :class:`AuditResult`.

    Raises:
        FileNotFoundError: when the run folder has no ``datalist.json`` or no dynamics.
        ValueError: on invalid options, a multi-label run, or dynamics of another datalist.

    Example::

        result = run_audit("runs/first", review=200)        # the 200 most suspicious items per split
        info = result.summary["splits"]["training"]
        info["estimated_noise_rate_interval"], info["identifiable"], info["expected_precision"]
    """
    opts = replace(options or AuditOptions(), **overrides)
    record = RunRecord.read(run_dir, opts.splits)
    oof = None
    if opts.folds:
        oof = cross_fit(record.root, folds=opts.folds, overrides=opts.fold_overrides,
                        which=opts.fold_checkpoint).aligned(record.dynamics["training"].ids)

    def final_model_probs(items: list[Mapping[str, Any]]) -> np.ndarray:
        return item_probabilities(record.root, items, which="final")

    return write_audit(record, opts, Path(out_dir) if out_dir is not None else None, oof, final_model_probs)
