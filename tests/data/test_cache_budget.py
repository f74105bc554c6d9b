"""The memory cache is sized before it is filled, falls back above its budget, and holds a rank's shard only."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, partition_dataset
from monai.transforms import Compose
from PIL import Image

from lilaw_med.data.datalist import Datalist
from lilaw_med.data.dataset import (
    ShardCacheDataset,
    available_memory_bytes,
    build_dataset,
    estimate_item_bytes,
    plan_cache,
    shard_indices,
)
from lilaw_med.data.readers import LoadMedicalImaged
from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.run.config import Config
from lilaw_med.training.data import build_data
from lilaw_med.training.sampling import ClassBalancedSampler


def _items(folder: Path, n: int, size: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
        items.append({"id": str(i), "image": str(folder / f"{i}.png"), "label": i % 2, "group": None})
    return items


def test_item_size_is_the_cached_arrays_plus_the_metadata_margin(tmp_path: Path) -> None:
    items = _items(tmp_path, 5, size=16)
    # one float32 channel of 16 x 16 pixels: 1,024 bytes, plus the fixed 4,096-byte margin
    assert estimate_item_bytes(items, Compose([LoadMedicalImaged("image")])) == 1024 + 4096
    assert estimate_item_bytes([], Compose([LoadMedicalImaged("image")])) == 0.0
    assert available_memory_bytes() > 0


@pytest.mark.parametrize(("cache_dir", "mode"), [("cache", "disk"), (None, "none")])
def test_a_budget_the_cache_exceeds_falls_back_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cache_dir: str | None, mode: str
) -> None:
    items = _items(tmp_path, 4)
    folder = tmp_path / cache_dir if cache_dir else None
    tf = Compose([LoadMedicalImaged("image")])
    with caplog.at_level(logging.INFO, logger="lilaw_med.data.dataset"):
        plan = plan_cache("memory", items, tf, cached_items=1000, budget_bytes=1_000_000, cache_dir=folder)
    assert plan.mode == mode and plan.estimate_bytes == 1000 * (1024 + 4096)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "budget" in warnings[0].getMessage()
    assert ("on disk" if mode == "disk" else "reading every item") in warnings[0].getMessage()
    # the same data within the budget stays in memory; other modes are not planned
    assert plan_cache("memory", items, tf, 100, 1_000_000, folder).mode == "memory"
    assert plan_cache("disk", items, tf, 10**9, 1, folder).mode == "disk"


def test_shards_are_monai_partitions_disjoint_and_cover_every_item() -> None:
    for n, world in ((10, 2), (11, 3), (2, 4)):
        shards = [shard_indices(n, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        if n >= world:
            assert shards == partition_dataset(list(range(n)), num_partitions=world, shuffle=False)


def test_two_ranks_cache_disjoint_shards_and_draw_only_from_their_own(tmp_path: Path) -> None:
    items = _items(tmp_path, 7)
    tf = Compose([LoadMedicalImaged("image")])
    cached_ids = []
    for rank in (0, 1):
        ds = build_dataset(items, tf, "memory", cached=shard_indices(7, rank, 2))
        assert isinstance(ds, ShardCacheDataset) and len(ds) == 7
        cached_ids.append({it["id"] for it in ds.cache.data})
        assert ds.cache._cache is not None and all(c is not None for c in ds.cache._cache)
        for sampler in (
            ResumableSampler(7, shuffle=True, seed=3, rank=rank, world_size=2, shard=True),
            ClassBalancedSampler([it["label"] for it in items], seed=3, rank=rank, world_size=2, shard=True),
        ):
            for epoch in (1, 2, 5):
                sampler.set_epoch(epoch)
                drawn = list(sampler)
                assert len(drawn) == 4  # ceil(7 / 2): equal epochs on both ranks
                assert set(drawn) <= set(ds.positions)
        torch.testing.assert_close(ds[rank]["image"], tf(dict(items[rank]))["image"])
    assert cached_ids[0].isdisjoint(cached_ids[1])
    assert cached_ids[0] | cached_ids[1] == {it["id"] for it in items}


def test_build_data_under_two_emulated_ranks_caches_each_rank_its_shard(tmp_path: Path) -> None:
    items = _items(tmp_path, 12)
    dl = Datalist(training=items[:8], validation=items[8:], test=[], class_names=["a", "b"])
    cfg = Config.from_mapping(
        {"data": {"datalist": "unused.json", "cache": "memory", "options": {"spatial_size": [16, 16]}}}
    )
    seen: dict[str, list[set[str]]] = {"train": [], "val": []}
    for rank in (0, 1):
        data = build_data(cfg, dl, None, torch.device("cpu"), rank=rank, world_size=2)
        for split, loader in (("train", data.train_loader), ("val", data.val_loader)):
            assert isinstance(loader.dataset, ShardCacheDataset)
            seen[split].append({it["id"] for it in loader.dataset.cache.data})
        assert data.meta_loader.dataset is data.val_loader.dataset
        assert set(data.train_sampler) <= set(data.train_loader.dataset.positions)
    for split, ranks in seen.items():
        assert ranks[0].isdisjoint(ranks[1]), split
    assert seen["train"][0] | seen["train"][1] == {it["id"] for it in items[:8]}
    # one process caches everything, as before
    single = build_data(cfg, dl, None, torch.device("cpu"))
    assert type(single.train_loader.dataset) is CacheDataset


def test_build_data_falls_back_to_the_disk_cache_when_the_budget_is_too_small(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai.data import PersistentDataset

    from lilaw_med.training import data as training_data

    items = _items(tmp_path, 6)
    dl = Datalist(training=items[:4], validation=items[4:], test=[], class_names=["a", "b"])
    cfg = Config.from_mapping(
        {"data": {"datalist": "x.json", "cache": "memory", "cache_dir": str(tmp_path / "c"),
                  "cache_memory_fraction": 0.5, "options": {"spatial_size": [16, 16]}}}
    )  # fmt: skip
    monkeypatch.setattr(training_data, "available_memory_bytes", lambda: 10_000)  # 5,000 bytes of budget
    with caplog.at_level(logging.WARNING, logger="lilaw_med.data.dataset"):
        data = build_data(cfg, dl, None, torch.device("cpu"))
    assert isinstance(data.train_loader.dataset, PersistentDataset)
    assert isinstance(data.val_loader.dataset, PersistentDataset)
    assert len([r for r in caplog.records if "budget" in r.getMessage()]) == 1
