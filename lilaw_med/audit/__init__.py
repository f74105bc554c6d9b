"""The audit: which training items are mislabeled or hard, from a run's own dynamics.

* :mod:`~lilaw_med.audit.window`: which epochs tell the truth (the scoring window);
* :mod:`~lilaw_med.audit.rank`: label quality scores from class probabilities (cleanlab's ``rank``);
* :mod:`~lilaw_med.audit.counts`: per-class noise rates with intervals and the flagged set (``count``/``filter``);
* :mod:`~lilaw_med.audit.difficulty`: easy / moderate / hard;
* :mod:`~lilaw_med.audit.crossfit`: out-of-fold probabilities (``lilaw-med audit --folds K``);
* :mod:`~lilaw_med.audit.core`: the typed audit of a run folder; :mod:`~lilaw_med.audit.report` and
  :mod:`~lilaw_med.audit.html`: its files.
"""

from lilaw_med.audit.core import AuditOptions, RunRecord, SplitAudit, audit_split
from lilaw_med.audit.counts import NoiseEstimate, confident_joint, estimate_noise, find_label_issues
from lilaw_med.audit.difficulty import difficulty
from lilaw_med.audit.rank import get_label_quality_scores, order_label_issues
from lilaw_med.audit.report import AuditResult, run_audit
from lilaw_med.audit.window import ScoringWindow, choose_window, window_pred_probs

__all__ = [
    "AuditOptions",
    "AuditResult",
    "NoiseEstimate",
    "RunRecord",
    "ScoringWindow",
    "SplitAudit",
    "audit_split",
    "choose_window",
    "confident_joint",
    "difficulty",
    "estimate_noise",
    "find_label_issues",
    "get_label_quality_scores",
    "order_label_issues",
    "run_audit",
    "window_pred_probs",
]
