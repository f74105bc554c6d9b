"""Preset pipelines, installed as ``lilaw_med.pipelines`` (never as a top-level ``pipelines`` package).

Each module (``radiology_2d``, ``radiology_3d``, ``pathology_patch``) is a thin preset over
:func:`lilaw_med.training.run.run_training` with ``default_config``, ``build`` and ``run``.
"""

__all__ = ["pathology_patch", "radiology_2d", "radiology_3d"]
