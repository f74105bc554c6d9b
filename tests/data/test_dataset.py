"""build_dataset: the three cache modes give the same items; the disk cache persists across datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lilaw_med.data.dataset import build_dataset
from lilaw_med.data.transforms import build_transforms


def test_cache_modes_give_identical_items_and_disk_cache_is_reused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        items.append({"id": str(i), "image": str(tmp_path / f"{i}.png"), "label": i % 2, "group": None})
    t = build_transforms("radiology_2d", {"spatial_size": [16, 16]})
    plain = [build_dataset(items, t, "none")[i] for i in range(4)]
    memory = build_dataset(items, t, "memory")
    disk = build_dataset(items, t, "disk", cache_dir=tmp_path / "cache")
    for i in range(4):
        for other in (memory[i], disk[i]):
            assert other["id"] == plain[i]["id"]
            torch.testing.assert_close(torch.as_tensor(other["image"]), torch.as_tensor(plain[i]["image"]))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
    again = build_dataset(items, t, "disk", cache_dir=tmp_path / "cache")
    torch.testing.assert_close(torch.as_tensor(again[0]["image"]), torch.as_tensor(plain[0]["image"]))
    with pytest.raises(ValueError, match="cache_dir"):
        build_dataset(items, t, "disk")
    with pytest.raises(ValueError, match="cache must be one of"):
        build_dataset(items, t, "gpu")
