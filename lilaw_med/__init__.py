"""lilaw-med: MONAI toolkit for training medical image classifiers on noisy labels with LiLAW."""

from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.losses import GCELoss, LiLAWLoss, LiLAWStats, SCELoss
from lilaw_med.weighting import (
    LiLAWTerms,
    LiLAWWeighting,
    class_probabilities,
    label_agreement,
    lilaw_terms,
    lilaw_weights,
)

__version__ = "0.1.0"

__all__ = [
    "GCELoss",
    "LiLAWHandler",
    "LiLAWLoss",
    "LiLAWStats",
    "LiLAWTerms",
    "LiLAWWeighting",
    "SCELoss",
    "__version__",
    "class_probabilities",
    "label_agreement",
    "lilaw_terms",
    "lilaw_weights",
]
