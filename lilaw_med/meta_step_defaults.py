"""The meta step's defaults, in one module that imports neither ignite nor MONAI.

``LiLAWHandler``'s signature, the config schema (``lilaw`` section) and the bundle overlay read
them from here, so a command that only reads a config never imports the ignite handler to learn
them. The packaged ``configs/bundle/lilaw_overlay.yaml`` is a document users read; a test keeps it
equal to these values.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["META_STEP_DEFAULTS"]

META_STEP_DEFAULTS: MappingProxyType[str, Any] = MappingProxyType({
    "lr": 0.01,  # the spec's
    "weight_decay": 0.01,  # the spec's
    "val_mode": "train",  # the prototype's (docs/method.md, open choice 1)
    "every": 1,  # a meta step after every training iteration, the spec's
    # an epoch moves the scalars as 32 spec steps would (about the paper protocol's steps per
    # epoch), whatever the batch size and data-set size; None gives the spec's step count
    # dependence (docs/method.md, "How far the scalars move")
    "epoch_budget": 32,
})
"""``LiLAWHandler`` keyword -> default."""
