"""Datasets over datalist items with the caching options of the config (none, memory, disk), and the
memory budget that keeps a memory cache from taking the machine down.

A memory cache is planned before it is filled (:func:`plan_cache`): a few items go through the cached
part of the transforms, their size times the number of items is the estimate, and above the budget
(a share of the available memory) the run caches on disk, or not at all, saying so in one log line.
Under torchrun a rank caches only its own shard (:func:`shard_indices`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, Transform

from lilaw_med.errors import InputError

__all__ = [
    "CACHE_MODES",
    "CachePlan",
    "ShardCacheDataset",
    "available_memory_bytes",
    "build_dataset",
    "estimate_item_bytes",
    "plan_cache",
    "shard_indices",
]

logger = logging.getLogger(__name__)

CACHE_MODES = ("none", "memory", "disk")
# what a cached item holds besides its arrays (MetaTensor metadata, the dict, ids): a margin, not a measure
_ITEM_OVERHEAD_BYTES = 4096


def shard_indices(length: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The positions a rank caches and trains on: ``rank, rank + world_size, ...``.

    The shards of MONAI's ``partition_dataset(shuffle=False, even_divisible=False)`` (also for fewer
    items than ranks): disjoint, together every position once.

    Args:
        length: the number of items.
        rank: this process's rank in ``[0, world_size)``.
        world_size: the number of processes.

    Returns:
        The positions, ascending.

    Raises:
        ValueError: for a ``rank`` outside ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}) but is {rank}.")
    return list(range(rank, int(length), world_size))


def available_memory_bytes() -> int:
    """The memory the system can give without swapping: ``MemAvailable`` of ``/proc/meminfo``, else the
    free physical pages (``os.sysconf``).

    Returns:
        Bytes.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _cached_part(transforms: Callable) -> tuple[Callable, int | None]:
    """The chain and the index of its first random step: what ``CacheDataset`` keeps is the part before."""
    chain = transforms if isinstance(transforms, Compose) else Compose([transforms])
    first = chain.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    return chain, first


def estimate_item_bytes(items: Sequence[Mapping[str, Any]], transforms: Callable, samples: int = 3) -> float:
    """The mean size of one cached item: a few items, spread over the list, through the cached part of
    ``transforms`` (the steps before the first random one, as ``CacheDataset`` caches them).

    Args:
        items: the datalist items.
        transforms: the chain the dataset applies.
        samples: how many items are decoded (evenly spaced; all when there are fewer).

    Returns:
        Bytes per item (arrays plus a fixed margin for metadata); 0 for no items.
    """
    if not items:
        return 0.0
    chain, first = _cached_part(transforms)
    picks = sorted({int(i) for i in np.linspace(0, len(items) - 1, num=min(samples, len(items)))})
    sizes = [_nbytes(chain(dict(items[i]), end=first, threading=True)) for i in picks]
    return float(np.mean(sizes)) + _ITEM_OVERHEAD_BYTES


@dataclass(frozen=True)
class CachePlan:
    """What a run caches, decided before anything is filled.

    Attributes:
        mode: the cache mode to build (``"none"``, ``"memory"`` or ``"disk"``).
        requested: the configured mode.
        estimate_bytes: the memory cache's estimated size (``None`` when no memory cache was asked for).
        budget_bytes: the memory it may take (``None`` when no memory cache was asked for).
    """

    mode: str
    requested: str
    estimate_bytes: float | None = None
    budget_bytes: float | None = None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def plan_cache(
    requested: str,
    items: Sequence[Mapping[str, Any]],
    transforms: Callable,
    cached_items: int,
    budget_bytes: float,
    cache_dir: str | os.PathLike | None,
    samples: int = 3,
) -> CachePlan:
    """Keeps a memory cache when its estimated size fits the budget, else falls back to the disk cache
    (when a folder is known) or to none, with one warning saying so.

    Args:
        requested: the configured cache mode; only ``"memory"`` is planned, the others are kept.
        items: items to estimate the size of one from (e.g. the training split).
        transforms: the chain whose cached part is measured.
        cached_items: how many items this process would hold in memory (its shards of every split).
        budget_bytes: the memory the cache may take.
        cache_dir: the disk cache's folder (``None``: no disk fallback).
        samples: items decoded for the estimate.

    Returns:
        The :class:`CachePlan`.

    Example::

        plan = plan_cache("memory", datalist.training, transforms, cached_items=len(datalist.training),
                          budget_bytes=8 * 2**30, cache_dir="cache/")
        ds = build_dataset(datalist.training, transforms, cache=plan.mode, cache_dir="cache/")
    """
    if requested != "memory" or cached_items == 0:
        return CachePlan(requested, requested)
    estimate = estimate_item_bytes(items, transforms, samples) * cached_items
    if estimate <= budget_bytes:
        logger.info(
            "data cache: %d item(s) in memory, about %s (budget %s)", cached_items, _gib(estimate), _gib(budget_bytes)
        )
        return CachePlan("memory", requested, estimate, budget_bytes)
    mode = "disk" if cache_dir is not None else "none"
    where = f"caching on disk in {cache_dir} instead" if mode == "disk" else "reading every item each epoch instead"
    logger.warning(
        "data cache: %d item(s) in memory would take about %s, more than the budget of %s "
        "(data.cache_memory_fraction of the available memory); %s",
        cached_items, _gib(estimate), _gib(budget_bytes), where,
    )  # fmt: skip
    return CachePlan(mode, requested, estimate, budget_bytes)


class ShardCacheDataset(Dataset):
    """A dataset over all items that holds only some of them (a rank's shard) in a memory cache.

    The others go through the whole chain when asked for; a rank whose sampler draws from its own
    shard never asks. The cache is MONAI's ``CacheDataset`` over the shard's items.

    Args:
        data: all items.
        transform: the chain.
        cached: the positions to cache (e.g. :func:`shard_indices`).
        cache_kwargs: passed to ``CacheDataset`` (``num_workers``, ``progress``, ...).
    """

    def __init__(
        self, data: Sequence[Any], transform: Callable, cached: Sequence[int], **cache_kwargs: Any
    ) -> None:
        super().__init__(data, transform)
        self.positions = {int(i): j for j, i in enumerate(cached)}
        self.cache = CacheDataset([data[i] for i in cached], transform, **cache_kwargs)

    def _transform(self, index: int) -> Any:
        j = self.positions.get(index % len(self.data))
        return self.cache[j] if j is not None else super()._transform(index)


def build_dataset(
    items: Sequence[Mapping[str, Any]],
    transforms: Callable,
    cache: str = "none",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    progress: bool = False,
    cached: Sequence[int] | None = None,
) -> Dataset:
    """A MONAI dataset over datalist items, caching the deterministic part of the transforms.

    The presets put every random transform last, so the cached part is everything up to the
    first augmentation (loading, channels, orientation, spacing, scaling, resizing).

    Example::

        ds = build_dataset(datalist.training, transforms, cache="memory", num_workers=os.cpu_count())

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
        cached: with ``"memory"``, the positions to hold (a rank's shard: :class:`ShardCacheDataset`);
            ``None``: all of them.

    Returns:
        The dataset.

    Raises:
        InputError: for an unknown cache mode or ``"disk"`` without ``cache_dir``.
    """
    data = [dict(it) for it in items]
    if cache == "none":
        return Dataset(data, transforms)
    if cache == "memory":
        options = {"cache_rate": cache_rate, "num_workers": num_workers, "progress": progress}
        return _memory_dataset(data, transforms, cached, options)
    if cache == "disk":
        if cache_dir is None:
            raise InputError("cache 'disk' needs a cache_dir (a folder for the cached items).")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transforms, cache_dir=cache_dir)
    raise InputError(f"cache must be one of {CACHE_MODES} but is {cache!r}.")


def _memory_dataset(
    data: list[dict[str, Any]], transforms: Callable, cached: Sequence[int] | None, options: dict[str, Any]
) -> Dataset:
    """The memory cache over all items, or over a rank's shard (``cached``)."""
    if cached is not None and not cached:
        return Dataset(data, transforms)  # a rank with no item of its own in this split
    if cached is not None and len(cached) < len(data):
        return ShardCacheDataset(data, transforms, cached, **options)
    return CacheDataset(data, transforms, **options)
