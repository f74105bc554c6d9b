"""Whole slides (pathology runs): tissue, a patch grid, patch probabilities, maps and a slide score.

A thumbnail of at most 1024 px is read tile by tile (:func:`lilaw_med.data.wsi.read_thumbnail`,
never a whole level) and split into tissue, pen ink and background
(:func:`lilaw_med.data.tissue.tissue_classes`); a grid of non-overlapping patches of the training
tile size is laid over level 0, and the patches whose tissue fraction is at least
``tissue_threshold`` are read as arrays (only those regions, through tiffslide) by the run's own
evaluation transforms, the way its slide-patch training items are. Outputs per slide: a patch CSV
(x, y, tissue fraction, class probabilities), a probability map ``.npy`` (grid rows x grid
columns x classes; NaN off tissue), one PNG per class probability, a PNG of the predicted class,
a PNG of the tissue mask on the thumbnail, and the slide's scores, which aggregate the patch
probabilities of each class by ``slide_aggregation``: ``mean`` (mean over tissue patches),
``max`` (the most confident patch), or ``top10`` (the mean of the top 10% of patches, at least
one: robust to a few false-positive patches while still detecting small lesions; the default).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.readers import read_header
from lilaw_med.data.tissue import BACKGROUND, PEN, TISSUE, tissue_classes
from lilaw_med.data.wsi import read_thumbnail
from lilaw_med.errors import InputError
from lilaw_med.run.run_dir import RunDir
from lilaw_med.training.evaluation import apply_calibration, calibration_args, run_inference
from lilaw_med.utils import atomic_write
from lilaw_med.workflows.trained_run import TrainedRun

__all__ = ["SLIDE_AGGREGATIONS", "SLIDE_SUFFIXES", "aggregate_patches", "is_slide", "mask_overlay", "predict_slide",
           "training_tile_size"]

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".tif", ".tiff")
SLIDE_AGGREGATIONS = ("mean", "max", "top10")


def aggregate_patches(probs: np.ndarray, method: str = "top10") -> np.ndarray:
    """Slide-level class scores from patch probabilities.

    Args:
        probs: (P, C) patch class probabilities.
        method: ``"mean"``, ``"max"`` or ``"top10"`` (per class, the mean of the top 10% of patches, >= 1).

    Returns:
        (C,) scores (not renormalised; NaN when there are no patches).

    Raises:
        ValueError: on an unknown method.
    """
    if method not in SLIDE_AGGREGATIONS:
        raise InputError(f"slide aggregation must be 'mean', 'max' or 'top10' but is {method!r}.")
    if len(probs) == 0:
        return np.full(probs.shape[1] if probs.ndim == 2 else 1, np.nan)
    if method == "mean":
        return probs.mean(axis=0)
    if method == "max":
        return probs.max(axis=0)
    k = max(1, int(np.ceil(0.1 * len(probs))))
    return np.sort(probs, axis=0)[-k:].mean(axis=0)


def _open_slide(path: Path) -> Any:
    try:
        # tiffslide (and zarr) load only when a slide is predicted
        import tiffslide
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        return tiffslide.TiffSlide(str(path))
    except Exception:  # not a slide tiffslide can read
        return None


def is_slide(path: Path, patch: int) -> bool:
    """Whether ``path`` is a whole slide to tile (a slide suffix, readable by tiffslide, pyramidal or
    larger than 8 training tiles), rather than one patch image."""
    if path.is_dir() or not path.name.lower().endswith(SLIDE_SUFFIXES):
        return False
    slide = _open_slide(path)
    if slide is None:
        return False
    try:
        w, h = slide.dimensions
        return slide.level_count > 1 or max(w, h) > 8 * patch
    except Exception:  # a header tiffslide cannot make sense of: read as an image, whose check says why
        return False
    finally:
        slide.close()


def training_tile_size(rd: RunDir) -> int:
    """The native size of the training tiles (the slide patch size), from the run's first training item."""

    dl = load_datalist(rd.datalist)
    for item in dl.training[:1]:
        if "patch_size" in item:
            size = item["patch_size"]
            return int(size[0] if isinstance(size, (list, tuple)) else size)
        header = read_header(item["image"])
        return int(header.shape[0])
    raise InputError(f"{rd.datalist}: no training item to take the tile size from.")


_THUMBNAIL_SIDE = 1024
# class colours of the predicted-class map (tab10's first colours), grey off tissue
_PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], dtype=np.float32,
)


def _png(rgb: np.ndarray, scale: int = 1) -> bytes:

    img = Image.fromarray(rgb)
    if scale > 1:
        img = img.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def _map_pngs(prob_map: np.ndarray, names: list[str], out_prefix: Path) -> list[Path]:
    """One PNG per class probability (blue 0 to red 1), the predicted class, grey off tissue."""
    rows, cols, num = prob_map.shape
    on = np.isfinite(prob_map).all(axis=2)
    scale = max(1, min(8, 2048 // max(rows, cols, 1)))
    written = []
    for k, name in enumerate(names):
        img = np.full((rows, cols, 3), 128, dtype=np.uint8)
        p = prob_map[on, k]
        img[on] = (np.stack([p, np.zeros_like(p), 1 - p], axis=1) * 255).astype(np.uint8)
        written.append(atomic_write(Path(f"{out_prefix}_probmap_{_safe_name(name)}.png"), _png(img, scale)))
    # the predicted class in its colour, darker where the model is less sure
    img = np.full((rows, cols, 3), 128, dtype=np.uint8)
    top = prob_map[on].argmax(axis=1) if on.any() else np.zeros(0, dtype=int)
    conf = prob_map[on].max(axis=1) if on.any() else np.zeros(0)
    img[on] = (_PALETTE[top % len(_PALETTE)] * (0.35 + 0.65 * conf[:, None])).astype(np.uint8)
    written.insert(0, atomic_write(Path(f"{out_prefix}_probmap.png"), _png(img, scale)))
    return written


def mask_overlay(thumb: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The thumbnail with background greyed out and pen ink marked yellow (tissue as it is).

    Args:
        thumb: (H, W, 3) uint8 RGB thumbnail.
        classes: (H, W) from :func:`lilaw_med.data.tissue.tissue_classes`.

    Returns:
        (H, W, 3) uint8 RGB.
    """

    out = thumb.copy()
    grey = thumb.mean(axis=2, keepdims=True)
    back = classes == BACKGROUND
    out[back] = (0.3 * grey[back] + 0.7 * 40).astype(np.uint8).repeat(3, axis=-1)
    out[classes == PEN] = (255, 230, 0)
    return out


def predict_slide(
    path: Path, run: TrainedRun, cal: Mapping[str, Any], patch: int, out_prefix: Path, batch_size: int,
    aggregation: str, tissue_threshold: float,
) -> tuple[np.ndarray, list[Path], int]:
    """Predicts one whole slide: patch probabilities, the maps beside the output, the slide's scores.

    Args:
        path: the slide.
        run: the trained run.
        cal: the calibration to apply (see :meth:`TrainedRun.calibration`).
        patch: the patch size at level 0 (the training tile size).
        out_prefix: the maps are written as ``{out_prefix}_probmap.png`` and so on.
        batch_size: inference batch size.
        aggregation: one of :data:`SLIDE_AGGREGATIONS`.
        tissue_threshold: minimum tissue fraction of a patch.

    Returns:
        ``(scores (C,), files written, patches scored)``.
    """
    names = run.output_names

    slide = _open_slide(path)
    try:
        w, h = slide.dimensions
    finally:
        slide.close()
    thumb = read_thumbnail(path, _THUMBNAIL_SIDE)
    classes = tissue_classes(thumb)
    mask = classes == TISSUE
    sy, sx = mask.shape[0] / h, mask.shape[1] / w
    rows, cols = h // patch, w // patch
    grid: list[tuple[int, int, float]] = []
    for r in range(rows):
        for c in range(cols):
            y0, y1 = int(r * patch * sy), max(int((r + 1) * patch * sy), int(r * patch * sy) + 1)
            x0, x1 = int(c * patch * sx), max(int((c + 1) * patch * sx), int(c * patch * sx) + 1)
            frac = float(mask[y0:y1, x0:x1].mean()) if mask[y0:y1, x0:x1].size else 0.0
            if frac >= tissue_threshold:
                grid.append((r, c, frac))
    logger.info("%s: %d x %d px, %d of %d patches on tissue", path.name, w, h, len(grid), rows * cols)
    written = [atomic_write(Path(f"{out_prefix}_tissue.png"), _png(mask_overlay(thumb, classes)))]
    if grid:
        # patch items, read as arrays by the run's own evaluation chain (its slide-patch loader),
        # exactly as slide-patch training items are; the loader reads them batch by batch
        items = [
            {"image": str(path), "location": [r * patch, c * patch], "size": [patch, patch], "id": f"{path.name}:{r}:{c}"}
            for r, c, _ in grid
        ]
        logits, _, _ = run_inference(run.network, run.loader(items, batch_size), run.device)
        probs, _ = apply_calibration(logits, **calibration_args(cal))
        probs = np.asarray(probs)
    else:
        probs = np.zeros((0, len(names)))
    num = probs.shape[1] if probs.ndim == 2 and probs.shape[1] else len(names)
    names = names if len(names) == num else [str(i) for i in range(num)]
    prob_map = np.full((rows, cols, num), np.nan, dtype=np.float32)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "width", "height", "tissue_fraction", *[f"prob_{n}" for n in names]])
    for (r, c, frac), p in zip(grid, probs, strict=True):
        prob_map[r, c] = p
        writer.writerow([c * patch, r * patch, patch, patch, f"{frac:.3f}", *[f"{v:.6f}" for v in p]])
    written.append(atomic_write(Path(f"{out_prefix}_patches.csv"), buf.getvalue()))
    npy = io.BytesIO()
    np.save(npy, prob_map)
    written.append(atomic_write(Path(f"{out_prefix}_probmap.npy"), npy.getvalue()))
    written += _map_pngs(prob_map, names, out_prefix)
    return aggregate_patches(probs, aggregation), written, len(grid)


