"""Using a trained run: :func:`evaluate_run` (metrics on labelled data) and :func:`predict_inputs`
(class probabilities for image files, DICOM series folders and whole slides).

Whole slides (pathology runs): a thumbnail of at most 1024 px is read tile by tile
(:func:`lilaw_med.data.wsi.read_thumbnail`, never a whole level) and split into tissue, pen ink
and background (:func:`lilaw_med.data.tissue.tissue_classes`); a grid of non-overlapping patches
of the training tile size is laid over level 0, and the patches whose tissue fraction is at least
``tissue_threshold`` are read as arrays (only those regions, through tiffslide) by the run's own
evaluation transforms, the way its slide-patch training items are. Outputs per slide: a patch CSV
(x, y, tissue fraction, class probabilities), a probability map ``.npy`` (grid rows x grid
columns x classes; NaN off tissue), one PNG per class probability, a PNG of the predicted class,
a PNG of the tissue mask on the thumbnail, and the slide row of the
predictions CSV, whose class scores aggregate the patch probabilities of each class by
``slide_aggregation``: ``mean`` (mean over tissue patches), ``max`` (the most confident patch),
or ``top10`` (the mean of the top 10% of patches, at least one: robust to a few false-positive
patches while still detecting small lesions; the default).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lilaw_med.data.presets import get_preset
from lilaw_med.data.tissue import tissue_mask
from lilaw_med.training.config import Config
from lilaw_med.training.data import transform_options
from lilaw_med.training.devices import resolve_device
from lilaw_med.training.evaluation import (
    apply_calibration,
    calibration_args,
    classification_metrics,
    run_inference,
)
from lilaw_med.training.model import load_model
from lilaw_med.training.run_dir import RunDir
from lilaw_med.utils import atomic_write, guard_csv_text

__all__ = ["SLIDE_SUFFIXES", "aggregate_patches", "evaluate_run", "mask_overlay", "predict_inputs", "tissue_mask"]

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------ shared
def _run_context(run_dir: str | os.PathLike, which: str, device: str | None) -> tuple[RunDir, Config, Any, dict, torch.device]:
    rd = RunDir(run_dir)
    if not rd.exists():
        raise FileNotFoundError(f"{rd.root} is not a run folder ({RunDir.CONFIG} is missing).")
    cfg = Config.from_mapping(rd.read_config())
    dev = resolve_device(device or cfg.train.device)
    network, meta = load_model(rd.root, which, dev)
    return rd, cfg, network, meta, dev


def _calibration(rd: RunDir, which: str, calibrated: bool) -> dict[str, Any]:
    cal: dict[str, Any] = {"method": "none", "temperature": 1.0, "threshold": None}
    if calibrated and rd.summary.is_file():
        saved = rd.read_json(RunDir.SUMMARY).get("calibration", {})
        cal = saved.get(which) or saved.get("final") or cal
    return cal


def _loader(items: list[dict[str, Any]], cfg: Config | Mapping[str, Any], batch_size: int) -> Any:
    from monai.data import DataLoader, Dataset

    from lilaw_med.data.transforms import build_transforms

    transforms = build_transforms(Config.from_mapping(cfg).data.preset, transform_options(cfg), train=False)
    return DataLoader(Dataset(items, transforms), batch_size=batch_size, shuffle=False, num_workers=0)


def _class_names(meta: Mapping[str, Any], num: int) -> list[str]:
    names = list(meta.get("class_names") or [])
    return names if len(names) == num else [str(i) for i in range(num)]


# ------------------------------------------------------------------------------------------ evaluate
def evaluate_run(
    run_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    splits: str = "all",
    which: str = "best",
    device: str | None = None,
    calibrated: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluates a run's model on its validation/test splits or on another datalist.

    Args:
        run_dir: the run folder.
        datalist: evaluate on every labelled item of this datalist instead (one split ``"datalist"``).
        splits: ``"validation"``, ``"test"`` or ``"all"`` (the run's own splits).
        which: ``"best"`` or ``"final"`` model.
        device: overrides the run's device.
        calibrated: apply the temperature/threshold fitted on the validation split during training.
        batch_size: inference batch size.

    Returns:
        ``{"checkpoint", "epoch", "calibration", "splits": {name: metrics}}`` (see
        :func:`lilaw_med.training.evaluation.classification_metrics`).

    Raises:
        FileNotFoundError: when the run folder, its model or the datalist is missing.
        ValueError: when no labelled item is left to evaluate.
    """
    from lilaw_med.data.datalist import load_datalist

    rd, cfg, network, meta, dev = _run_context(run_dir, which, device)
    multi = cfg.data.multi_label
    names = list(meta.get("class_names") or []) or None
    if datalist is not None:
        dl = load_datalist(datalist, class_names=names, multi_label=multi, require_training=False)
        groups = {"datalist": [it for _, it in dl.iter_items() if it.get("label") is not None]}
    else:
        if not rd.datalist.is_file():
            raise FileNotFoundError(f"{rd.datalist} is missing; pass --datalist.")
        dl = load_datalist(rd.datalist, class_names=names, multi_label=multi)
        wanted = ("validation", "test") if splits == "all" else (splits,)
        groups = {s: [it for it in dl.split(s) if it.get("label") is not None] for s in wanted}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ValueError(f"nothing to evaluate: no labelled items in {datalist or rd.datalist} ({splits}).")
    cal = _calibration(rd, which, calibrated)
    report: dict[str, Any] = {"checkpoint": meta["path"], "epoch": meta.get("epoch"), "calibration": cal, "splits": {}}
    for name, items in groups.items():
        logits, labels, _ = run_inference(network, _loader(items, cfg, batch_size), dev)
        report["splits"][name] = classification_metrics(
            logits, labels, names, multi_label=multi, n_bins=cfg.eval.ece_bins, **calibration_args(cal),
        )
    return report


# ------------------------------------------------------------------------------------------ slides
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
    if method not in ("mean", "max", "top10"):
        raise ValueError(f"slide aggregation must be 'mean', 'max' or 'top10' but is {method!r}.")
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
        import tiffslide
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        return tiffslide.TiffSlide(str(path))
    except Exception:  # not a slide tiffslide can read
        return None


def _is_slide(path: Path, patch: int) -> bool:
    if path.is_dir() or not path.name.lower().endswith(SLIDE_SUFFIXES):
        return False
    slide = _open_slide(path)
    if slide is None:
        return False
    try:
        w, h = slide.dimensions
        return slide.level_count > 1 or max(w, h) > 8 * patch
    finally:
        slide.close()


def _training_tile_size(rd: RunDir) -> int:
    """The native size of the training tiles (the slide patch size), from the run's first training item."""
    from lilaw_med.data.datalist import load_datalist
    from lilaw_med.data.readers import read_header

    dl = load_datalist(rd.datalist)
    for item in dl.training[:1]:
        if "patch_size" in item:
            size = item["patch_size"]
            return int(size[0] if isinstance(size, (list, tuple)) else size)
        header = read_header(item["image"])
        return int(header.shape[0])
    raise ValueError(f"{rd.datalist}: no training item to take the tile size from.")


_THUMBNAIL_SIDE = 1024
# class colours of the predicted-class map (tab10's first colours), grey off tissue
_PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], dtype=np.float32,
)


def _png(rgb: np.ndarray, scale: int = 1) -> bytes:
    from PIL import Image

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
    from lilaw_med.data.tissue import BACKGROUND, PEN

    out = thumb.copy()
    grey = thumb.mean(axis=2, keepdims=True)
    back = classes == BACKGROUND
    out[back] = (0.3 * grey[back] + 0.7 * 40).astype(np.uint8).repeat(3, axis=-1)
    out[classes == PEN] = (255, 230, 0)
    return out


def _predict_slide(
    path: Path, network: Any, cfg: Config, dev: torch.device, cal: Mapping[str, Any], patch: int,
    out_prefix: Path, names: list[str], batch_size: int, aggregation: str, tissue_threshold: float,
) -> tuple[np.ndarray, list[Path], int]:
    from lilaw_med.data.tissue import TISSUE, tissue_classes
    from lilaw_med.data.wsi import read_thumbnail

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
        logits, _, _ = run_inference(network, _loader(items, cfg, batch_size), dev)
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


# ------------------------------------------------------------------------------------------ predict
def _one_line(error: BaseException) -> str:
    """An exception as one short line (readers' messages may span lines or quote whole headers)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text[:500]


def _check_input(p: Path, spatial_dims: int) -> None:
    """Checks one input exists, has a supported format and the model's dimensionality.

    Raises:
        FileNotFoundError, ValueError: what is wrong with it (as the readers' own checks say).
    """
    from lilaw_med.data.readers import image_kind, list_series_files, read_header

    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    if p.is_dir() and not list_series_files(p):
        raise ValueError(f"{p}: a folder must be a DICOM series (it holds no DICOM file).")
    image_kind(p)  # raises a clear error on an unsupported format
    header = read_header(p)
    if header.ndim != spatial_dims:
        raise ValueError(
            f"{p}: a {header.ndim}D image (shape {tuple(header.shape)}) but the run's model is {spatial_dims}D."
        )


def _expand_inputs(inputs: Sequence[str | os.PathLike], spatial_dims: int) -> list[Path]:
    """:func:`_check_input` over every input, stopping at the first bad one (the verdict test's entry).

    Returns:
        The absolute paths.
    """
    out = []
    for raw in inputs:
        _check_input(Path(raw), spatial_dims)
        out.append(Path(raw).absolute())
    return out


def _finite(image: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(image)).all())


class _Prepared:
    """The run's evaluation transforms split after the loader, so the raw pixels can be checked:
    a NaN or infinite pixel is refused before intensity scaling could clip it into a valid-looking image."""

    def __init__(self, cfg: Config) -> None:
        from monai.transforms import Compose

        from lilaw_med.data.transforms import build_transforms

        chain = build_transforms(cfg.data.preset, transform_options(cfg), train=False)
        self.load, self.rest = chain.transforms[0], Compose(list(chain.transforms[1:]))

    def __call__(self, path: Path) -> dict[str, Any]:
        item = self.load({"image": str(path), "id": str(path)})
        if not _finite(item["image"]):
            raise ValueError(f"{path}: NaN or infinite pixel values; no prediction is made for it.")
        item = self.rest(item)
        if not _finite(item["image"]):
            raise ValueError(f"{path}: NaN or infinite values after the run's transforms; no prediction is made for it.")
        return item


def _predict_images(
    images: Sequence[tuple[int, Path]], network: Any, cfg: Config, dev: torch.device, cal: Mapping[str, Any],
    batch_size: int, names: list[str],
) -> dict[int, list[Any]]:
    """Rows (``predicted_label, predicted_class, num_patches, probs..., error``) by input index; a bad input
    gets its error and no class, and never stops the others."""
    from monai.data import DataLoader, Dataset

    multi = cfg.data.multi_label
    prepare = _Prepared(cfg)
    rows: dict[int, list[Any]] = {}
    for start in range(0, len(images), batch_size):  # chunk by chunk: memory bounded by one batch of images
        good: list[tuple[int, Path, dict[str, Any]]] = []
        for i, p in images[start : start + batch_size]:
            try:
                good.append((i, p, prepare(p)))
            except Exception as e:  # any reader or transform failure is this input's, not the run's
                rows[i] = _error_row(names, _one_line(e))
        if not good:
            continue
        loader = DataLoader(Dataset([item for _, _, item in good]), batch_size=len(good), shuffle=False, num_workers=0)
        logits, _, _ = run_inference(network, loader, dev)
        finite = torch.isfinite(logits).all(dim=1).tolist()
        probs, pred = apply_calibration(logits, multi_label=multi, **calibration_args(cal))
        for (i, p, _), ok, pr, pd in zip(good, finite, probs, pred, strict=True):
            if not ok:  # an extreme input can overflow the network: no class rather than a made-up one
                rows[i] = _error_row(names, f"{p}: the model's output is not finite; no prediction is made for it.")
            elif multi:
                rows[i] = [";".join(str(int(v)) for v in pd), ";".join(n for n, v in zip(names, pd, strict=True) if v),
                           "", *pr.tolist(), ""]
            else:
                rows[i] = [int(pd), names[int(pd)], "", *pr.tolist(), ""]
    return rows


def _error_row(names: list[str], error: str) -> list[Any]:
    return ["", "", "", *([""] * len(names)), error]


def _csv_cell(value: Any) -> Any:
    """Numbers as numbers (floats to 6 decimals), text guarded against spreadsheet formulas."""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, str):
        return guard_csv_text(value)
    return value


def predict_inputs(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    which: str = "best",
    device: str | None = None,
    batch_size: int = 32,
    calibrated: bool = True,
    slide_aggregation: str = "top10",
    tissue_threshold: float = 0.5,
) -> dict[str, Any]:
    """Class probabilities for images, DICOM series and (pathology runs) whole slides, to a CSV.

    Every input gets a row, in the order given. An input that cannot be predicted (missing, an
    unsupported or unreadable file, the wrong dimensionality, NaN or infinite pixels, a non-finite
    model output) gets its reason in the ``error`` column and no class or probabilities; the other
    inputs are predicted as usual.

    Args:
        run_dir: the run folder.
        inputs: image files (DICOM, NIfTI, PNG/JPEG/TIFF, .npy), DICOM series folders, slides.
        output: the CSV to write: ``id, path, kind, predicted_label, predicted_class, num_patches,
            prob_<class>..., error`` (``kind`` is ``image`` or ``slide``; a slide row holds its
            aggregated scores and ``num_patches``). Text cells that a spreadsheet would run as a
            formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) get a leading ``'`` (OWASP).
        which: ``"best"`` or ``"final"`` model.
        device: overrides the run's device.
        batch_size: inference batch size.
        calibrated: apply the calibration fitted during training.
        slide_aggregation: ``"mean"``, ``"max"`` or ``"top10"`` (see the module docstring).
        tissue_threshold: minimum tissue fraction of a slide patch.

    Returns:
        ``{"n": rows written, "output": path, "slide_maps": [paths], "failed": [(input, error)]}``.

    Raises:
        FileNotFoundError: when the run or its model is missing.
        ValueError: on an unloadable model, or invalid options.
    """
    rd, cfg, network, meta, dev = _run_context(run_dir, which, device)
    if not 0 <= tissue_threshold <= 1:
        raise ValueError(f"tissue_threshold must lie in [0, 1] but is {tissue_threshold}.")
    if slide_aggregation not in ("mean", "max", "top10"):
        raise ValueError(f"slide aggregation must be 'mean', 'max' or 'top10' but is {slide_aggregation!r}.")
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive integer but is {batch_size}.")
    cal = _calibration(rd, which, calibrated)
    num = int(meta.get("num_outputs", 2))
    names = _class_names(meta, 2 if num == 1 and not cfg.data.multi_label else num)
    out_path = Path(output)
    patch = _training_tile_size(rd) if get_preset(cfg.data.preset).patches else 0
    spatial_dims = int(meta.get("spatial_dims", 2))
    results: dict[int, list[Any]] = {}
    kinds: dict[int, str] = {}
    images: list[tuple[int, Path]] = []
    slides: list[tuple[int, Path]] = []
    for i, raw in enumerate(inputs):
        p = Path(raw).absolute()
        kinds[i] = "image"
        try:
            if patch and p.exists() and _is_slide(p, patch):
                kinds[i] = "slide"
                slides.append((i, p))
                continue
            _check_input(p, spatial_dims)
            images.append((i, p))
        except Exception as e:  # this input's problem: reported in its row, the others go on
            results[i] = _error_row(names, _one_line(e))
    results.update(_predict_images(images, network, cfg, dev, cal, batch_size, names))
    maps: list[Path] = []
    for i, p in slides:
        try:
            prefix = out_path.with_name(f"{out_path.stem}_{p.name.split('.')[0]}")
            scores, written, n_patches = _predict_slide(
                p, network, cfg, dev, cal, patch, prefix, names, batch_size, slide_aggregation, tissue_threshold
            )
        except Exception as e:
            results[i] = _error_row(names, _one_line(e))
            continue
        maps += [w for w in written if w.suffix == ".png"]
        if np.isfinite(scores).all():
            label = int(np.nanargmax(scores))
            results[i] = [label, names[label], n_patches, *scores.tolist(), ""]
        else:
            why = "the model's output is not finite on some patches" if n_patches else "no patch on tissue was scored"
            results[i] = ["", "", n_patches, *([""] * len(names)), f"{p}: {why}; no prediction is made for it."]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "kind", "predicted_label", "predicted_class", "num_patches",
                     *[f"prob_{n}" for n in names], "error"])
    failed: list[tuple[str, str]] = []
    for i, raw in enumerate(inputs):
        row = results[i]
        if row[-1]:
            failed.append((str(raw), row[-1]))
        writer.writerow([_csv_cell(v) for v in [Path(raw).name, str(Path(raw).absolute()), kinds[i], *row]])
    atomic_write(out_path, buf.getvalue())
    return {"n": len(inputs), "output": str(out_path), "slide_maps": [str(m) for m in maps], "failed": failed}
