"""``lilaw-med predict``: class probabilities for images, DICOM series and whole slides, to one CSV."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.presets import get_preset
from lilaw_med.errors import InputError
from lilaw_med.workflows.predict.images import auto_num_workers, predict_images
from lilaw_med.workflows.predict.output import PredictionWriter, error_cell, error_row, header
from lilaw_med.workflows.predict.slides import (
    SLIDE_AGGREGATIONS,
    SLIDE_SUFFIXES,
    is_slide,
    predict_slide,
    training_tile_size,
)
from lilaw_med.workflows.trained_run import TrainedRun

__all__ = ["predict_inputs"]

logger = logging.getLogger(__name__)


def _slide_prefixes(output: Path, slides: Sequence[Path]) -> dict[Path, Path]:
    """Each slide's map prefix, ``{output stem}_{slide name up to its first dot}``, unique among ``slides``.

    Slides whose names share that part (the same file name in two folders, ``a.svs`` and ``a.tif``)
    get the first 8 hex digits of the SHA-256 of their absolute path appended, so that no slide's
    maps overwrite another's; the others keep the plain name.
    """
    stems = {p: p.name.split(".")[0] for p in slides}
    count = Counter(stems[p].lower() for p in dict.fromkeys(slides))
    prefixes = {}
    for p, stem in stems.items():
        if count[stem.lower()] > 1:
            stem += "_" + hashlib.sha256(str(p.absolute()).encode("utf-8")).hexdigest()[:8]
        prefixes[p] = output.with_name(f"{output.stem}_{stem}")
    return prefixes


def _slide_row(
    path: Path, run: TrainedRun, cal: Mapping[str, Any], patch: int, prefix: Path, batch_size: int,
    aggregation: str, tissue_threshold: float, maps: list[str],
) -> list[Any]:
    """The row cells after ``kind`` of one slide; its maps are written at ``prefix``, its PNG maps added to ``maps``."""
    names = run.output_names
    try:
        scores, written, n_patches = predict_slide(
            path, run, cal, patch, prefix, batch_size, aggregation, tissue_threshold
        )
    except Exception as e:  # this slide's problem: reported in its row, the others go on
        return error_row(names, error_cell(e))
    maps += [str(w) for w in written if w.suffix == ".png"]
    if np.isfinite(scores).all():
        label = int(np.nanargmax(scores))
        return [label, names[label], n_patches, *scores.tolist(), ""]
    why = "the model's output is not finite on some patches" if n_patches else "no patch on tissue was scored"
    return ["", "", n_patches, *([""] * len(names)), f"{path}: {why}; no prediction is made for it."]


def _image_rows(batches: Iterator[list[list[Any]]]) -> Iterator[tuple[list[Any], bool]]:
    """The rows of :func:`predict_images` one by one, each with whether it ends its batch."""
    for rows in batches:
        for k, row in enumerate(rows):
            yield row, k == len(rows) - 1


def _check_options(tissue_threshold: float, slide_aggregation: str, batch_size: int, num_workers: int | None) -> None:
    """Raises InputError for an option of :func:`predict_inputs` out of its range."""
    if not 0 <= tissue_threshold <= 1:
        raise InputError(f"tissue_threshold must lie in [0, 1] but is {tissue_threshold}.")
    if slide_aggregation not in SLIDE_AGGREGATIONS:
        raise InputError(f"slide aggregation must be 'mean', 'max' or 'top10' but is {slide_aggregation!r}.")
    if batch_size < 1:
        raise InputError(f"batch size must be a positive integer but is {batch_size}.")
    if num_workers is not None and num_workers < 0:
        raise InputError(f"num_workers must be 0 or more but is {num_workers}.")


def _is_slide_input(path: Path, patch: int) -> bool:
    """Whether ``path`` is a whole slide; slides are told apart first (only a pathology run, whose
    ``patch`` is its tile size, has any; a suffix check spares the other inputs an open)."""
    return bool(patch) and path.name.lower().endswith(SLIDE_SUFFIXES) and path.exists() and is_slide(path, patch)


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
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Class probabilities for images, DICOM series and (pathology runs) whole slides, to a CSV.

    Every input gets a row, in the order given, written batch by batch as the rows are made (to
    ``OUTPUT.partial``, renamed to ``OUTPUT`` when all are done; see
    :class:`~lilaw_med.workflows.predict.output.PredictionWriter`). An input that cannot be
    predicted (missing, an unsupported or unreadable file, the wrong dimensionality, NaN or infinite
    pixels, a non-finite model output) gets its reason in the ``error`` column and no class or
    probabilities; the other inputs are predicted as usual. Images are read, checked and
    transformed in ``num_workers`` loader processes, each decoded once.

    Example::

        predict_inputs("runs/radiology_2d-20260101-120000", collect_inputs(folder="scans"), "preds.csv")

    Args:
        run_dir: the run folder.
        inputs: image files (DICOM, NIfTI, PNG/JPEG/TIFF, .npy), DICOM series folders, slides (see
            :func:`~lilaw_med.workflows.predict.inputs.collect_inputs` for list files, folders and patterns).
        output: the CSV to write: ``id, path, kind, predicted_label, predicted_class, num_patches,
            prob_<class>..., error`` (``kind`` is ``image`` or ``slide``; a slide row holds its
            aggregated scores and ``num_patches``). Text cells that a spreadsheet would run as a
            formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) get a leading ``'`` (OWASP).
        which: ``"best"`` or ``"final"`` model.
        device: overrides the run's device.
        batch_size: inference batch size.
        calibrated: apply the calibration fitted during training.
        slide_aggregation: ``"mean"``, ``"max"`` or ``"top10"`` (see :mod:`~lilaw_med.workflows.predict.slides`).
        tissue_threshold: minimum tissue fraction of a slide patch.
        num_workers: loader worker processes for images (``None``:
            :func:`~lilaw_med.workflows.predict.images.auto_num_workers`).

    Returns:
        ``{"n": rows written, "output": path, "slide_maps": [paths], "failed": [(input, error)]}``.

    Raises:
        FileNotFoundError: when the run or its model is missing.
        ValueError: on an unloadable model.
        InputError: for invalid options.
    """
    _check_options(tissue_threshold, slide_aggregation, batch_size, num_workers)
    run = TrainedRun.load(run_dir, which, device)
    cal = run.calibration(calibrated)
    out_path = Path(output)
    patch = training_tile_size(run.run_dir) if get_preset(run.config.data.preset).patches else 0
    absolute = [Path(raw).absolute() for raw in inputs]
    slide = [_is_slide_input(p, patch) for p in absolute]
    workers = auto_num_workers() if num_workers is None else num_workers
    images = [str(p) for p, s in zip(absolute, slide, strict=True) if not s]
    prefixes = _slide_prefixes(out_path, [p for p, s in zip(absolute, slide, strict=True) if s])
    maps: list[str] = []
    failed: list[tuple[str, str]] = []

    def slide_row(path: Path) -> tuple[list[Any], bool]:
        row = _slide_row(path, run, cal, patch, prefixes[path], batch_size, slide_aggregation, tissue_threshold, maps)
        return row, True

    # closing() ends the generator, and with it its DataLoader's workers, when the writer block raises
    with (contextlib.closing(predict_images(images, run, cal, batch_size, workers)) as batches,
          PredictionWriter(out_path, header(run.output_names)) as writer):
        image_rows = _image_rows(batches)
        for raw, p, is_a_slide in zip(inputs, absolute, slide, strict=True):
            row, batch_done = slide_row(p) if is_a_slide else next(image_rows)
            if row[-1]:
                failed.append((str(raw), row[-1]))
            writer.write_rows([[Path(raw).name, str(p), "slide" if is_a_slide else "image", *row]])
            if batch_done:
                writer.flush()
    return {"n": len(inputs), "output": str(out_path), "slide_maps": maps, "failed": failed}
