"""Modality presets as MONAI transform chains (radiology 2D, radiology 3D, pathology)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.transforms import Compose

__all__ = ["PRESETS", "build_transforms", "preset_defaults"]

PRESETS = ("radiology_2d", "radiology_3d", "pathology")


def preset_defaults(preset: str) -> dict[str, Any]:
    """Returns the documented default options of a preset (their keys are the valid option names).

    Args:
        preset: one of ``"radiology_2d"``, ``"radiology_3d"``, ``"pathology"``.

    Returns:
        A new dict of option name -> default value.

    Raises:
        ValueError: for an unknown preset.
    """
    raise NotImplementedError


def build_transforms(preset: str, options: Mapping[str, Any] | None = None, train: bool = False) -> Compose:
    """Builds the MONAI transform chain of a modality preset.

    Output of the chain for one item: ``"image"`` float32 tensor (C, H, W) or (C, H, W, D),
    ``"label"`` LongTensor scalar (single-label) or float tensor (L,) (multi-label), and
    ``"id"`` plus every other key passed through.

    Args:
        preset: one of ``"radiology_2d"``, ``"radiology_3d"``, ``"pathology"``.
        options: overrides of :func:`preset_defaults`; unknown keys are an error.
        train: adds the augmentations switched on in ``options`` (all off by default).

    Returns:
        The ``Compose`` to apply to datalist items.

    Raises:
        ValueError: for an unknown preset or option.
    """
    raise NotImplementedError
