"""``lilaw-med predict`` on a trained run, one job per module.

* :mod:`~lilaw_med.workflows.predict.core`: :func:`predict_inputs`, the entry point;
* :mod:`~lilaw_med.workflows.predict.inputs`: which inputs, and the verdict on each;
* :mod:`~lilaw_med.workflows.predict.images`: images and DICOM series through the run's chain;
* :mod:`~lilaw_med.workflows.predict.slides`: whole slides (pathology runs);
* :mod:`~lilaw_med.workflows.predict.output`: the predictions CSV.
"""

from __future__ import annotations

from lilaw_med.workflows.predict.core import predict_inputs
from lilaw_med.workflows.predict.inputs import collect_inputs
from lilaw_med.workflows.predict.slides import SLIDE_SUFFIXES, aggregate_patches, mask_overlay

__all__ = ["SLIDE_SUFFIXES", "aggregate_patches", "collect_inputs", "mask_overlay", "predict_inputs"]
