"""The rules a DICOM series folder must meet to stack into one volume (the loader and the pre-flight).

MONAI stacks the slices of a folder in InstanceNumber order, leaves out (with a warning) a slice
without InstanceNumber, and takes the slice direction from the first and last ImagePositionPatient;
so a folder must hold one series of single-frame grey slices of one size, each with its own
InstanceNumber, not all at one position.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lilaw_med.data.readers.common import _bytes_problem
from lilaw_med.data.readers.dicom_meta import _dicom_bits, _dicom_geometry

Slices = Sequence[tuple[Any, str]]
"""The datasets of a folder with their file paths."""


def _series_problem(slices: Slices) -> str | None:
    """Why datasets cannot be stacked into one volume, or ``None`` (the first rule of
    :data:`_SERIES_RULES` that fails).

    Raises:
        InputError: when a slice's Rows/Columns/NumberOfFrames/SamplesPerPixel are not integers.
    """
    for rule in _SERIES_RULES:
        problem = rule(slices)
        if problem:
            return problem
    return None


def _slice_kind(slices: Slices) -> str | None:
    """A multi-frame or colour slice (the first one found)."""
    for ds, f in slices:
        name = os.path.basename(f)
        _, _, frames, samples = _dicom_geometry(ds, f)
        if frames > 1:
            return f"a series of multi-frame files (e.g. {name}: {frames} frames); expected single-frame slices."
        if samples > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            return f"a series of colour images (e.g. {name}: {ds.get('PhotometricInterpretation')}); expected grey slices."
    return None


def _total_size(slices: Slices) -> str | None:
    """The slices' pixels together above the size bound (each slice passed on its own)."""
    total_bits = 0
    for ds, f in slices:
        rows, cols, frames, samples = _dicom_geometry(ds, f)
        total_bits += rows * cols * frames * samples * _dicom_bits(ds)
    return _bytes_problem(-(-total_bits // 8), f"{len(slices)} slices of pixels together")


def _mixed_sizes(slices: Slices) -> str | None:
    sizes: dict[tuple[int, int], list[str]] = {}
    for ds, f in slices:
        rows, cols, _, _ = _dicom_geometry(ds, f)
        sizes.setdefault((rows, cols), []).append(os.path.basename(f))
    if len(sizes) < 2:
        return None
    desc = ", ".join(f"{r}x{c} ({len(v)} files, e.g. {v[0]})" for (r, c), v in sorted(sizes.items()))
    return f"the series mixes slice sizes: {desc}; expected one size."


def _mixed_series(slices: Slices) -> str | None:
    series: dict[str, str] = {}
    for ds, f in slices:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), os.path.basename(f))
    if len(series) < 2:
        return None
    examples = ", ".join(list(series.values())[:3])
    return f"the folder mixes {len(series)} series (different SeriesInstanceUID, e.g. {examples}); expected one series."


def _numbering(slices: Slices) -> str | None:
    """A slice without an integer InstanceNumber, or two slices sharing one."""
    seen: dict[int, str] = {}
    for ds, f in slices:
        number, name = ds.get("InstanceNumber"), os.path.basename(f)
        if number is None or number == "":
            return f"slice {name} has no InstanceNumber (the loader would leave it out); expected every slice numbered."
        try:
            n = int(number)
        except (TypeError, ValueError):
            return f"slice {name} has an invalid InstanceNumber {number!r}; expected an integer."
        if n in seen:
            return (
                f"slices {seen[n]} and {name} share InstanceNumber {n}: the slice order is ambiguous; "
                f"expected one number per slice."
            )
        seen[n] = name
    return None


def _no_direction(slices: Slices) -> str | None:
    """The first and last slices (by InstanceNumber) at one position: no slice direction."""
    ordered = sorted((ds for ds, _ in slices), key=lambda d: int(d.InstanceNumber))
    first, last = ordered[0], ordered[-1]
    if not all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in (first, last)):
        return None
    a = np.asarray(first.ImagePositionPatient, dtype=float)
    b = np.asarray(last.ImagePositionPatient, dtype=float)
    if a.shape == b.shape and np.allclose(a, b):
        return (
            f"the first and last slices lie at one position (ImagePositionPatient {a.tolist()}): no slice "
            f"direction; expected slices along an axis."
        )
    return None


# in this order: a later rule may rely on an earlier one (the direction needs unique numbers)
_SERIES_RULES: tuple[Callable[[Slices], str | None], ...] = (
    _slice_kind,
    _total_size,
    _mixed_sizes,
    _mixed_series,
    _numbering,
    _no_direction,
)
