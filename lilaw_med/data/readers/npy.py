"""NumPy ``.npy`` arrays through MONAI's ``NumpyReader``: every axis is spatial (no channel axis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lilaw_med.data.readers.common import ImageHeader
from lilaw_med.errors import InputError, one_line

__all__ = ["NUMPY_SUFFIXES", "numpy_header"]

NUMPY_SUFFIXES = (".npy",)

def numpy_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    """The pre-flight's verdict on a ``.npy`` file: the array header, float arrays read to look for NaN/inf.

    Args:
        p: the file.
        kind: its family (from :func:`~lilaw_med.data.readers.image_kind`).
        decode: decode the pixels even where the header suffices.

    Returns:
        The header.

    Raises:
        InputError: one line naming the file and what is wrong.
    """
    # NumPy's reader gives the array as stored: every axis is spatial (no channel axis)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise InputError(f"{p}: not a readable .npy file ({one_line(e, with_type=True)}).") from e
    shape = tuple(int(s) for s in arr.shape)
    finite = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.floating) else True
    return ImageHeader("numpy", shape, 1, True, finite)

