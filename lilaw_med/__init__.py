"""lilaw-med: MONAI toolkit for training medical image classifiers on noisy labels with LiLAW.

The public names load on first use (PEP 562 ``__getattr__``): ``import lilaw_med`` costs no
MONAI or ignite import, so a command that never trains (``lilaw-med predict``, ``validate-data``)
does not pay for the training engines (see :mod:`lilaw_med.lean`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lilaw_med.quiet import filter_known_warnings

filter_known_warnings()  # before anything imports MONAI's readers

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs
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

# public name -> the module that defines it
_LAZY = {
    "LiLAWHandler": "lilaw_med.handlers.meta_step",
    "GCELoss": "lilaw_med.losses",
    "LiLAWLoss": "lilaw_med.losses",
    "LiLAWStats": "lilaw_med.losses",
    "SCELoss": "lilaw_med.losses",
    "LiLAWTerms": "lilaw_med.weighting",
    "LiLAWWeighting": "lilaw_med.weighting",
    "class_probabilities": "lilaw_med.weighting",
    "label_agreement": "lilaw_med.weighting",
    "lilaw_terms": "lilaw_med.weighting",
    "lilaw_weights": "lilaw_med.weighting",
}

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


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access and caches the name in this module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lilaw_med' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
