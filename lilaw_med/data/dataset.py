"""Datasets over datalist items with the caching options of the config (none, memory, disk)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset

__all__ = ["CACHE_MODES", "build_dataset"]

CACHE_MODES = ("none", "memory", "disk")


def build_dataset(
    items: Sequence[Mapping[str, Any]],
    transforms: Callable,
    cache: str = "none",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    progress: bool = False,
) -> Dataset:
    """A MONAI dataset over datalist items, caching the deterministic part of the transforms.

    The presets put every random transform last, so the cached part is everything up to the
    first augmentation (loading, channels, orientation, spacing, scaling, resizing).

    Args:
        items: datalist items (dicts with ``id``, ``image``, ``label``, ...).
        transforms: the chain from :func:`lilaw_med.data.transforms.build_transforms`.
        cache: ``"none"`` (read every time: ``Dataset``), ``"memory"`` (``CacheDataset``: filled
            once, before the first epoch), ``"disk"`` (``PersistentDataset``: one ``.pt`` per
            item in ``cache_dir``, reused across runs; changed items are hashed anew).
        cache_dir: folder of the disk cache (required for ``"disk"``).
        cache_rate: fraction of items cached in memory.
        num_workers: threads filling the memory cache (``None``: MONAI's default).
        progress: show the memory cache's progress bar.

    Returns:
        The dataset.

    Raises:
        ValueError: for an unknown cache mode or ``"disk"`` without ``cache_dir``.
    """
    data = [dict(it) for it in items]
    if cache == "none":
        return Dataset(data, transforms)
    if cache == "memory":
        return CacheDataset(
            data, transforms, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache 'disk' needs a cache_dir (a folder for the cached items).")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transforms, cache_dir=cache_dir)
    raise ValueError(f"cache must be one of {CACHE_MODES} but is {cache!r}.")
