"""What combines training and the audit: the layer above the engine (docs/ARCHITECTURE.md).

* :mod:`~lilaw_med.workflows.audit`: ``run_audit``, the audit with cross-fitting and the final-model baseline;
* :mod:`~lilaw_med.workflows.crossfit`: out-of-fold probabilities (``lilaw-med audit --folds K``);
* :mod:`~lilaw_med.workflows.refine`: train, audit, retrain without the flagged items;
* :mod:`~lilaw_med.workflows.trained_run`: :class:`TrainedRun`, a finished run loaded for inference;
* :mod:`~lilaw_med.workflows.evaluate`: ``lilaw-med evaluate``;
* :mod:`~lilaw_med.workflows.predict`: ``lilaw-med predict``.
"""
