"""lilaw-med: MONAI toolkit for training medical image classifiers on noisy labels with LiLAW."""

from lilaw_med.quiet import filter_known_warnings

filter_known_warnings()  # before anything imports MONAI's readers

from lilaw_med.handlers.meta_step import LiLAWHandler  # noqa: E402
from lilaw_med.losses import GCELoss, LiLAWLoss, LiLAWStats, SCELoss  # noqa: E402
from lilaw_med.weighting import (  # noqa: E402
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
