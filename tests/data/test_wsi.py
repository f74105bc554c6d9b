"""Whole-slide patches: tiffslide backend, MONAI's reader API, region reads with bounded memory."""

from __future__ import annotations

import json
import tracemalloc
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


def test_reading_patches_from_a_20k_slide_allocates_the_patches_not_the_level(big_slide: Path) -> None:
    load = LoadWSIPatchd("image")
    load({"image": str(big_slide), "location": [0, 0], "size": [8, 8]})  # opens the slide
    rng = np.random.default_rng(0)
    # numpy's buffers (the decoded tiles and the patches) are traced, whatever the allocator and kernel
    tracemalloc.start()
    try:
        for i in range(24):
            y, x = (int(v) for v in rng.integers(0, 20480 - 2 * 512, 2))
            out = load({"image": str(big_slide), "location": [y, x], "size": [512, 512], "level": i % 2})
            assert out["image"].shape == (3, 512, 512)
            del out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a decoded level 0 would take 20480 * 20480 * 3 bytes = 1200 MiB; a 512 px patch at level 1 spans
    # 1024 px of level 0 and its tiles, a few MiB
    assert peak < 100 << 20, peak


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


def test_tissue_classes_reject_blue_green_and_black_pen_and_background() -> None:
    from lilaw_med.data.tissue import BACKGROUND, PEN, TISSUE, tissue_classes, tissue_mask

    img = np.full((60, 60, 3), 242, dtype=np.uint8)  # bright, unsaturated glass
    img[5:55, 5:30] = (205, 120, 175)  # eosin-pink tissue
    img[5:55, 30:55] = (120, 70, 160)  # haematoxylin-purple tissue
    img[10:14, :] = (30, 60, 170)  # blue marker across tissue and glass
    img[30:34, :] = (40, 140, 60)  # green marker
    img[45:49, :] = (25, 25, 30)  # black marker
    classes = tissue_classes(img, pen_margin=0)
    for rows in (slice(10, 14), slice(30, 34), slice(45, 49)):
        assert (classes[rows] == PEN).all()
    assert (classes[20:28, 5:55] == TISSUE).all() and (classes[36:44, 5:55] == TISSUE).all()
    assert (classes[56:, :] == BACKGROUND).all() and (classes[20:28, 56:] == BACKGROUND).all()
    # ink grows by pen_margin (the blurred stroke edge), and the bool mask is the tissue class
    assert (tissue_classes(img)[9] == PEN).all()
    assert np.array_equal(tissue_mask(img), tissue_classes(img) == TISSUE)


@pytest.mark.parametrize("levels", [1, 2])
def test_thumbnail_is_the_block_mean_of_a_tiled_slide_read_tile_by_tile(tmp_path: Path, levels: int) -> None:
    import tifffile

    from lilaw_med.data.wsi import read_thumbnail

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1000, 1300, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            tw.write(img[:: 2**level, :: 2**level], tile=(256, 256), photometric="rgb", subfiletype=1 if level else 0)
    # a 130 px thumbnail: level 1 (650 px wide) when there is one, in 5 x 5 blocks; else level 0 in 10 x 10
    thumb = read_thumbnail(path, max_side=130)
    src, f = (img[::2, ::2], 5) if levels == 2 else (img, 10)
    expected = src.reshape(src.shape[0] // f, f, src.shape[1] // f, f, 3).mean(axis=(1, 3))
    assert thumb.shape == (100, 130, 3) and thumb.dtype == np.uint8
    assert np.abs(thumb.astype(float) - expected).max() <= 0.5 + 1e-9
    # a side that does not divide: partial last blocks are the mean of the pixels they have
    odd = read_thumbnail(path, max_side=120)
    f = -(-src.shape[1] // 120)  # ceil: 11 on level 0, 6 on level 1
    assert odd.shape[:2] == (-(-src.shape[0] // f), -(-src.shape[1] // f))
    last = src[(odd.shape[0] - 1) * f :, (odd.shape[1] - 1) * f :, 0]
    assert abs(float(odd[-1, -1, 0]) - last.mean()) <= 0.5 + 1e-9
