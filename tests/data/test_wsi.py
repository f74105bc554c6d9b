"""Whole-slide patches: tiffslide backend, MONAI's reader API, region reads with bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.preflight import check_datalist
from lilaw_med.data.transforms import build_transforms
from lilaw_med.data.wsi import LoadWSIPatchd, patch_dataset

TILE = 256


def _write_big_slide(path: Path, side: int = 20480) -> None:
    """A tiled 2-level pyramid JPEG TIFF written tile by tile from pre-encoded tiles (no full array)."""
    import tifffile

    imagecodecs = pytest.importorskip("imagecodecs")  # installed with tiffslide

    tiles = []
    for k in range(16):
        t = np.zeros((TILE, TILE, 3), np.uint8)
        t[..., 0] = k * 15
        t[..., 2] = 200
        tiles.append(imagecodecs.jpeg_encode(t, level=95))

    def gen(h: int, w: int):
        for r in range(h // TILE):
            for c in range(w // TILE):
                yield tiles[(r * 7 + c) % 16]

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level in range(2):
            h = w = side >> level
            tw.write(
                gen(h, w),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                subfiletype=1 if level else 0,
            )


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wsi") / "big.tiff"
    _write_big_slide(path)
    return path


def test_patches_come_from_the_requested_region_and_level(big_slide: Path) -> None:
    load = LoadWSIPatchd("image")
    r, c = 37, 51  # tile grid position
    out = load(
        {"id": "p", "image": str(big_slide), "location": [r * TILE + 10, c * TILE + 20], "size": [32, 32]}
    )
    img = np.asarray(out["image"])
    assert img.shape == (3, 32, 32)
    assert abs(img[0].mean() - ((r * 7 + c) % 16) * 15) < 4  # the tile's red value (JPEG tolerance)
    low = load({"id": "q", "image": str(big_slide), "location": [0, 0], "size": [16, 16], "level": 1})
    assert np.asarray(low["image"]).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="outside the slide"):
        load({"id": "far", "image": str(big_slide), "location": [20470, 0], "size": [64, 64]})


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS"
)
def test_reading_patches_from_a_20k_slide_keeps_memory_growth_under_500_mb(big_slide: Path) -> None:
    load = LoadWSIPatchd("image")
    load({"image": str(big_slide), "location": [0, 0], "size": [8, 8]})  # opens the slide
    before = _proc_status_mb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: the peak below is this reading's
    rng = np.random.default_rng(0)
    for i in range(24):
        y, x = (int(v) for v in rng.integers(0, 20480 - 2 * 512, 2))
        out = load({"image": str(big_slide), "location": [y, x], "size": [512, 512], "level": i % 2})
        assert out["image"].shape == (3, 512, 512)
    growth_mb = _proc_status_mb("VmHWM:") - before
    print(f"peak RSS growth reading 24 patches of 512 px from a 20480 px slide: {growth_mb:.1f} MB")
    assert growth_mb < 500, growth_mb
    # a decoded level 0 would take 20480 * 20480 * 3 bytes = 1200 MB; region reads stay far below
    assert growth_mb < 100, growth_mb


def test_sample_slide_patches_work_in_the_pathology_preset_and_monai_patch_dataset(
    small_sample: dict[str, Path],
) -> None:
    dl = load_datalist(small_sample["slide"])
    item = dl.training[0]
    assert "location" in item and item["id"].endswith("@" + "_".join(str(v) for v in item["location"]))
    ours = build_transforms("pathology", {})(item)
    assert ours["image"].shape == (3, 64, 64) and ours["label"].dtype == torch.long
    monai_item = patch_dataset([item])[0]
    # MONAI's (C, H, W) uint8 vs the preset's (C, W, H) in [0, 1]
    np.testing.assert_allclose(
        np.asarray(monai_item["image"]).transpose(0, 2, 1) / 255.0, ours["image"].numpy(), atol=1e-6
    )


def test_preflight_flags_patches_outside_the_slide(small_sample: dict[str, Path], tmp_path: Path) -> None:
    src = json.loads(small_sample["slide"].read_text())
    src["training"][0]["location"] = [5000, 5000]
    path = small_sample["slide"].parent / "bad_slide_datalist.json"
    path.write_text(json.dumps(src))
    problems = check_datalist(load_datalist(path), expected_dims=2)
    assert len(problems) == 1 and "outside the slide" in problems[0].reason
