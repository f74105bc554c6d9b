"""Deterministic synthetic sample data as real files (DICOM, NIfTI, PNG tiles, a tiled TIFF slide)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_sample_data"]


def write_sample_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_2d: int = 300,
    n_3d: int = 120,
    n_tiles: int = 300,
    noise_rate: float = 0.2,
) -> dict[str, Path]:
    """Writes the sample data sets with datalists and injected, recorded label noise.

    Args:
        out_dir: the folder to write into (created).
        seed: the seed; the same seed gives byte-identical pixel data and labels.
        n_2d: number of 2D DICOM images.
        n_3d: number of 3D NIfTI volumes.
        n_tiles: number of RGB pathology tiles.
        noise_rate: symmetric label-noise rate injected into training and validation labels.

    Returns:
        ``{"radiology_2d", "radiology_3d", "pathology", "slide"}`` -> path of each noisy datalist JSON.
    """
    raise NotImplementedError
