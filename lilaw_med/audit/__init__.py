"""The audit: which training items are mislabeled or hard, from a run's own dynamics.

* :mod:`~lilaw_med.audit.window`: which epochs tell the truth (the scoring window);
* :mod:`~lilaw_med.audit.rank`: label quality scores from class probabilities (cleanlab's ``rank``);
* :mod:`~lilaw_med.audit.counts`: per-class noise rates with intervals and the flagged set (``count``/``filter``);
* :mod:`~lilaw_med.audit.difficulty`: easy / moderate / hard;
* :mod:`~lilaw_med.audit.core`: the typed audit of a run folder; :mod:`~lilaw_med.audit.report` and
  :mod:`~lilaw_med.audit.html`: its files (``lilaw-med audit`` adds cross-fitting through
  :func:`lilaw_med.workflows.audit.run_audit`);
* :mod:`~lilaw_med.audit.review`: the review page where a reader decides (``lilaw-med review``), and
  the merge of several readers' decision files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lilaw_med.audit.core import AuditOptions, SplitAudit, audit_split
from lilaw_med.audit.counts import (
    NoiseEstimate,
    combine_estimates,
    confident_joint,
    estimate_noise,
    expected_precision,
    find_label_issues,
    wrong_label_chances,
)
from lilaw_med.audit.difficulty import difficulty
from lilaw_med.audit.rank import get_label_quality_scores, order_label_issues
from lilaw_med.audit.record import RunRecord
from lilaw_med.audit.window import ScoringWindow, choose_window, window_pred_probs

if TYPE_CHECKING:
    from lilaw_med.audit.report import AuditResult, write_audit

__all__ = [
    "AuditOptions",
    "AuditResult",
    "NoiseEstimate",
    "RunRecord",
    "ScoringWindow",
    "SplitAudit",
    "audit_split",
    "choose_window",
    "combine_estimates",
    "confident_joint",
    "difficulty",
    "estimate_noise",
    "expected_precision",
    "find_label_issues",
    "get_label_quality_scores",
    "order_label_issues",
    "window_pred_probs",
    "write_audit",
    "wrong_label_chances",
]

# the report's names load on first access (PEP 562): the command line's parser reads AuditOptions'
# defaults, and must not import the report's scikit-learn, Jinja2 and plots for it
_REPORT = ("AuditResult", "write_audit")


def __getattr__(name: str) -> Any:
    """Imports :mod:`lilaw_med.audit.report` on first access of its public names."""
    if name not in _REPORT:
        raise AttributeError(f"module 'lilaw_med.audit' has no attribute {name!r}")
    # see _REPORT: the parser reads AuditOptions without the report's imports
    from lilaw_med.audit import report

    value = getattr(report, name)
    globals()[name] = value
    return value
