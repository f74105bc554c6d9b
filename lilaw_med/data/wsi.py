"""Patches from whole-slide images through MONAI's WSI reader API with the tiffslide backend.

tiffslide (an OpenSlide-compatible reader over tifffile + zarr) decodes only the tiles that a
requested region touches, so reading a patch from a 100k x 100k slide costs a few tiles of
memory. MONAI's own ``tifffile`` backend decodes the whole level for every patch and is not
used here.

A patch item is a datalist item with ``"location"``: ``[row, col]`` of the patch's top-left
corner in level-0 pixels (MONAI's order), and optionally ``"size"`` ``[h, w]`` (pixels at the
patch level) and ``"level"`` (MONAI's ``WSIPatchKeys``; ``patch_size``/``patch_level`` are
accepted too). :class:`LoadWSIPatchd` reads it inside a transform chain
(the ``pathology`` preset uses it for items with a location); :func:`patch_dataset` gives a
MONAI ``PatchWSIDataset`` over the same items. :func:`read_thumbnail` gives a small overview of a
slide, tile by tile, in the memory of the thumbnail and one tile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from os.path import abspath
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor, PatchWSIDataset
from monai.data.wsi_reader import BaseWSIReader
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from lilaw_med.errors import InputError, one_line

__all__ = ["LoadWSIPatchd", "TiffSlideWSIReader", "patch_dataset", "read_thumbnail"]


class TiffSlideWSIReader(BaseWSIReader):
    """A MONAI WSI reader (``BaseWSIReader``) on tiffslide: region reads, pure Python, no OpenSlide.

    Follows MONAI's ``OpenSlideWSIReader`` (tiffslide has the OpenSlide API), which cannot be
    subclassed without the openslide package installed.

    Args:
        level: the default level patches are read at.
        kwargs: passed to MONAI's ``BaseWSIReader`` (``channel_dim``, ``dtype``, ``mode``, ...).
    """

    backend = "tiffslide"
    supported_suffixes = ["tif", "tiff", "svs", "ndpi", "scn", "bif"]

    @staticmethod
    def get_level_count(wsi: Any) -> int:
        """The number of pyramid levels."""
        return int(wsi.level_count)

    def get_size(self, wsi: Any, level: int) -> tuple[int, int]:
        """(height, width) at ``level``."""
        width, height = wsi.level_dimensions[level]
        return int(height), int(width)

    def get_downsample_ratio(self, wsi: Any, level: int) -> float:
        """Downsampling of ``level`` relative to level 0."""
        return float(wsi.level_downsamples[level])

    def _get_patch(
        self, wsi: Any, location: tuple[int, int], size: tuple[int, int], level: int, dtype: Any, mode: str
    ) -> np.ndarray:
        # tiffslide takes (x, y) and (w, h): reverse MONAI's (row, col) and (h, w)
        region = wsi.read_region(location=location[::-1], size=size[::-1], level=level, as_array=True)
        if mode == "RGB" and region.shape[-1] == 4:
            region = region[..., :3]
        patch = np.asarray(region, dtype=dtype)
        return np.moveaxis(patch, -1, self.channel_dim)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike | np.ndarray, **kwargs: Any) -> Any:
        """Opens one slide (or a list of slides) with tiffslide.

        Raises:
            FileNotFoundError: when a slide file is missing.
            InputError: when tiffslide cannot open it.
        """
        # tiffslide (and zarr) load only when a slide is opened
        import tiffslide

        slides = []
        for filename in ensure_tuple(data):
            if not os.path.isfile(filename):
                raise FileNotFoundError(f"slide not found: {filename}")
            try:
                slide = tiffslide.TiffSlide(filename)
            except Exception as e:
                raise InputError(
                    f"{filename}: not a readable whole-slide image ({one_line(e, with_type=True)})."
                ) from e
            slide._lilaw_filename = str(filename)  # tiffslide keeps no public path
            slides.append(slide)
        return slides if len(slides) > 1 else slides[0]

    @staticmethod
    def get_file_path(wsi: Any) -> str:
        """The slide's file path."""
        return str(abspath(getattr(wsi, "_lilaw_filename", "")))

    def get_mpp(self, wsi: Any, level: int) -> tuple[float, float]:
        """Microns per pixel (y, x) at ``level``, from tiffslide's properties.

        Raises:
            InputError: when the slide records no resolution.
        """
        down = self.get_downsample_ratio(wsi, level)
        mx, my = wsi.properties.get("tiffslide.mpp-x"), wsi.properties.get("tiffslide.mpp-y")
        if mx and my:
            return down * float(my), down * float(mx)
        raise InputError(
            f"{self.get_file_path(wsi)}: the slide records no microns-per-pixel; use a level instead."
        )

    def get_power(self, wsi: Any, level: int) -> float:
        """Objective power at ``level``.

        Raises:
            InputError: when the slide records none.
        """
        power = wsi.properties.get("tiffslide.objective-power")
        if power:
            return float(power) / self.get_downsample_ratio(wsi, level)
        raise InputError(
            f"{self.get_file_path(wsi)}: the slide records no objective power; use a level instead."
        )


def _patch_geometry(
    item: Mapping[Hashable, Any], default_size: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[int, int], int]:
    try:
        location = tuple(int(v) for v in item["location"])
        size_t = _patch_size(item.get("size") or item.get("patch_size") or default_size)
        level = int(item.get("level", item.get("patch_level", 0)) or 0)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"item {item.get('id', '?')}: a slide patch needs 'location' [row, col] and 'size' [h, w] ({e})."
        ) from e
    if len(location) != 2 or len(size_t) != 2:
        raise InputError(f"item {item.get('id', '?')}: location and patch_size must have 2 values each.")
    return (location[0], location[1]), (size_t[0], size_t[1]), level


def _patch_size(size: Any) -> tuple[int, ...]:
    """``(h, w)`` from a size (one value: a square); raises ValueError when there is none."""
    if size is None:
        raise InputError("no patch_size in the item and no default size")
    size_t = tuple(int(v) for v in ensure_tuple(size))
    return (size_t[0], size_t[0]) if len(size_t) == 1 else size_t


class LoadWSIPatchd(MapTransform):
    """Reads a patch of a whole-slide image for items with a ``location`` (tiffslide backend).

    Output ``image``: float32 ``MetaTensor`` (3, W, H), x first like every other 2D image of
    this package (MONAI's image readers put x first), values 0-255.

    Slides stay open per worker process (a small cache by path), so consecutive patches from
    one slide do not reopen it.

    Args:
        keys: the key holding the slide path (``"image"``).
        patch_size: the default (h, w) when an item has no ``size``.
        max_open: slides kept open at once.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        patch_size: Sequence[int] | None = None,
        max_open: int = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = TiffSlideWSIReader(channel_dim=0, dtype=np.uint8, mode="RGB")
        self.patch_size = patch_size
        self.max_open = max_open
        self._open: dict[str, Any] = {}

    def _slide(self, path: str) -> Any:
        if path not in self._open:
            if len(self._open) >= self.max_open:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            self._open[path] = self.reader.read(path)
        return self._open[path]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            location, size, level = _patch_geometry(d, self.patch_size)
            slide = self._slide(path)
            height, width = self.reader.get_size(slide, 0)
            down = self.reader.get_downsample_ratio(slide, level)
            if (
                location[0] < 0
                or location[1] < 0
                or location[0] + size[0] * down > height
                or location[1] + size[1] * down > width
            ):
                raise InputError(
                    f"item {d.get('id', '?')}: patch at {location} size {size} level {level} lies outside the slide "
                    f"{path} ({height}x{width})."
                )
            patch, meta = self.reader.get_data(slide, location=location, size=size, level=level)
            # (C, H, W) row-major -> (C, W, H) x first, like the tile readers
            arr = np.ascontiguousarray(np.swapaxes(patch, 1, 2)).astype(np.float32)
            meta["filename_or_obj"] = path
            d[key] = MetaTensor(arr, meta={k: v for k, v in meta.items() if not isinstance(v, dict)})
        return d

    def __getstate__(self) -> dict[str, Any]:
        # open slides hold file handles: workers reopen them
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def patch_dataset(
    items: Sequence[Mapping[str, Any]],
    transform: Any = None,
    patch_size: int | Sequence[int] | None = None,
    patch_level: int | None = None,
) -> PatchWSIDataset:
    """MONAI's ``PatchWSIDataset`` over patch items, read with :class:`TiffSlideWSIReader`.

    Locations are the top-left corners (``center_location=False``), in MONAI's (row, col)
    order; the output is MONAI's (``image`` (3, H, W) uint8, ``label`` float32). Prefer the
    ``pathology`` preset (:class:`LoadWSIPatchd`) for training, which keeps ``id`` and the
    package's label types.

    Args:
        items: datalist items with ``image`` (slide path), ``location``, ``label``.
        transform: applied to each output dict.
        patch_size: default patch size (else each item's ``size``).
        patch_level: default level (else each item's ``level``).

    Returns:
        The dataset.
    """
    data = [dict(it) for it in items]
    return PatchWSIDataset(
        data,
        patch_size=patch_size,
        patch_level=patch_level,
        transform=transform,
        center_location=False,
        reader=TiffSlideWSIReader(channel_dim=0, level=patch_level or 0),
        additional_meta_keys=["id"],
    )


def _bins(start: int, size: int, factor: int) -> tuple[np.ndarray, int, int]:
    """reduceat starts of the pixels ``start .. start + size`` binned by ``factor``; first and last bin."""
    bins = np.arange(start, start + size) // factor
    return np.flatnonzero(np.diff(bins, prepend=-1)), int(bins[0]), int(bins[-1]) + 1


def _thumbnail_level(levels: list[Any], max_side: int) -> Any:
    """The smallest pyramid level that is still at least ``max_side`` (level 0 when none is)."""
    sizes = [(int(lv.keyframe.imagelength), int(lv.keyframe.imagewidth)) for lv in levels]
    fitting = [i for i, (h, w) in enumerate(sizes) if max(h, w) >= max_side] or [0]
    return levels[min(fitting, key=lambda i: sizes[i][0] * sizes[i][1])]


def _block_sums(level: Any, height: int, width: int, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The RGB sums of each ``factor x factor`` block of a level, read tile by tile."""
    sums = np.zeros(shape, np.float64)
    # bounded reads: 16 MB of compressed data at a time, one decoding thread
    for segment, index5, _shape in level.pages[0].segments(maxworkers=1, buffersize=16 << 20):
        if segment is None:  # an empty tile: zeros
            continue
        y0, x0 = int(index5[2]), int(index5[3])
        tile = segment[0, : height - y0, : width - x0]  # full-size edge tiles hang over the image
        tile = np.repeat(tile[..., :1], 3, axis=-1) if tile.shape[-1] < 3 else tile[..., :3]
        rows, r0, r1 = _bins(y0, tile.shape[0], factor)
        cols, c0, c1 = _bins(x0, tile.shape[1], factor)
        sums[r0:r1, c0:c1] += np.add.reduceat(np.add.reduceat(tile.astype(np.float32), rows, axis=0), cols, axis=1)
    return sums


def read_thumbnail(path: str | os.PathLike, max_side: int = 1024) -> np.ndarray:
    """An RGB overview of a TIFF slide whose longest side is at most ``max_side`` pixels.

    The smallest pyramid level with a side of at least ``max_side`` is read tile by tile (or strip
    by strip) and each tile is averaged into ``factor x factor`` blocks of the thumbnail at once,
    so memory holds the thumbnail's sums and one decoded tile, never a whole level: a
    single-level 20k x 20k slide (1.2 GB decoded) costs a few MB. ``factor`` is the integer
    ``ceil(side / max_side)``; the last row and column of blocks may be partial (their mean is
    over the pixels they have).

    Args:
        path: a TIFF-based slide (TIFF, SVS, NDPI, ...) that tifffile reads.
        max_side: the longest side of the thumbnail in pixels.

    Returns:
        (h, w, 3) uint8 RGB, covering level 0 with ``level0_height / h`` pixels per row (and
        likewise for columns).

    Raises:
        InputError: when the file is not a slide tifffile can read tile by tile, or ``max_side < 1``.
    """
    # tifffile loads only when a thumbnail is read
    import tifffile

    if max_side < 1:
        raise InputError(f"max_side must be a positive int but is {max_side}.")
    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:
        raise InputError(f"{path}: not a TIFF slide ({one_line(e, with_type=True)}).") from e
    with tf:
        level = _thumbnail_level(list(tf.series[0].levels), max_side)
        page = level.keyframe
        if page.planarconfig != 1 and page.samplesperpixel > 1:  # 1: contiguous samples
            raise InputError(f"{path}: planar (separate-sample) TIFF slides are not supported.")
        height, width = int(page.imagelength), int(page.imagewidth)
        factor = max(1, math.ceil(max(height, width) / max_side))
        out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
        sums = _block_sums(level, height, width, factor, (out_h, out_w, 3))
        count_y = np.bincount(np.arange(height) // factor, minlength=out_h)
        count_x = np.bincount(np.arange(width) // factor, minlength=out_w)
        mean = sums / (count_y[:, None, None] * count_x[None, :, None])
        if np.issubdtype(page.dtype, np.integer) and page.dtype.itemsize > 1:  # 16-bit slides to 8 bit
            mean = mean / np.iinfo(page.dtype).max * 255.0
        return np.clip(np.rint(mean), 0, 255).astype(np.uint8)
