"""Fixtures of the data tests: one small generated sample data set per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lilaw_med.data.sample import write_sample_data


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small sample data set (all four kinds) and its noisy datalists."""
    out = tmp_path_factory.mktemp("sample")
    return write_sample_data(out, seed=0, n_2d=24, n_3d=12, n_tiles=40, n_slides=3, noise_rate=0.25)
