"""Shared test helpers: a small generated sample data set and tiny training overrides per preset."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, dict[str, Path]] = {}

# per pipeline: its preset and the --set overrides making a run tiny
TINY = {
    "radiology_2d": ("radiology_2d", ["data.options.spatial_size=[32,32]"]),
    "radiology_3d": ("radiology_3d", ["data.options.spatial_size=[16,16,16]"]),
    "pathology_patch": ("pathology", ["data.options.spatial_size=[32,32]"]),
}


def small_sample_data(root: Path) -> dict[str, Path]:
    """Writes (once per process) a small version of the sample data; returns the datalist paths."""
    if "paths" not in _CACHE:
        from lilaw_med.data.sample import write_sample_data

        _CACHE["paths"] = write_sample_data(root, seed=0, n_2d=48, n_3d=24, n_tiles=48, n_slides=3)
    return _CACHE["paths"]


def tiny_overrides(preset: str, paths: dict[str, Path], *extra: str) -> list[str]:
    """``--set`` strings for a one-epoch run of ``preset`` on the small sample data."""
    from lilaw_med.data.presets import get_preset

    name, sizes = TINY[preset]
    return [
        f"data.datalist={paths[get_preset(name).sample_key]}",
        "data.sample_data=false",
        "data.cache=none",
        "train.epochs=1",
        "train.batch_size=8",
        "train.progress=false",
        "train.device=cpu",
        "output.plots=true",
        "output.tensorboard=false",
        "lilaw.warmup_epochs=0",  # one epoch: weighting and meta steps from the first iteration
        *sizes,
        *extra,
    ]
