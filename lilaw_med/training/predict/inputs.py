"""What ``predict`` accepts as one input, and the verdict on it."""

from __future__ import annotations

import os
from pathlib import Path

from lilaw_med.data.readers import read_header

__all__ = ["check_input"]


def check_input(path: str | os.PathLike, spatial_dims: int) -> Path:
    """Checks one input as the pre-flight check does (:func:`lilaw_med.data.readers.read_header`) and
    that it has the model's dimensionality.

    Args:
        path: an image file or a DICOM series folder.
        spatial_dims: the model's spatial dimensions.

    Returns:
        The absolute path.

    Raises:
        FileNotFoundError, ValueError: what is wrong with it, in one line naming it.
    """
    p = Path(path)
    problem = read_header(p).dims_problem(spatial_dims)
    if problem:
        raise ValueError(f"{p}: {problem}")
    return p.absolute()
