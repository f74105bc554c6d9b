"""``lilaw-med predict``: class probabilities for images, DICOM series and whole slides, to one CSV."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.presets import get_preset
from lilaw_med.training.predict.images import predict_images
from lilaw_med.training.predict.inputs import check_input
from lilaw_med.training.predict.output import csv_cell, error_row, header, one_line
from lilaw_med.training.predict.slides import SLIDE_AGGREGATIONS, is_slide, predict_slide, training_tile_size
from lilaw_med.training.trained_run import TrainedRun
from lilaw_med.utils import atomic_write

__all__ = ["predict_inputs"]


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
    run = TrainedRun.load(run_dir, which, device)
    if not 0 <= tissue_threshold <= 1:
        raise ValueError(f"tissue_threshold must lie in [0, 1] but is {tissue_threshold}.")
    if slide_aggregation not in SLIDE_AGGREGATIONS:
        raise ValueError(f"slide aggregation must be 'mean', 'max' or 'top10' but is {slide_aggregation!r}.")
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive integer but is {batch_size}.")
    cal = run.calibration(calibrated)
    names = run.output_names
    out_path = Path(output)
    patch = training_tile_size(run.run_dir) if get_preset(run.config.data.preset).patches else 0
    results: dict[int, list[Any]] = {}
    kinds: dict[int, str] = {}
    images: list[tuple[int, Path]] = []
    slides: list[tuple[int, Path]] = []
    for i, raw in enumerate(inputs):
        p = Path(raw).absolute()
        kinds[i] = "image"
        try:
            if patch and p.exists() and is_slide(p, patch):
                kinds[i] = "slide"
                slides.append((i, p))
                continue
            images.append((i, check_input(p, run.spatial_dims)))
        except Exception as e:  # this input's problem: reported in its row, the others go on
            results[i] = error_row(names, one_line(e))
    results.update(predict_images(images, run, cal, batch_size))
    maps: list[Path] = []
    for i, p in slides:
        try:
            prefix = out_path.with_name(f"{out_path.stem}_{p.name.split('.')[0]}")
            scores, written, n_patches = predict_slide(
                p, run, cal, patch, prefix, batch_size, slide_aggregation, tissue_threshold
            )
        except Exception as e:
            results[i] = error_row(names, one_line(e))
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
    writer.writerow(header(names))
    failed: list[tuple[str, str]] = []
    for i, raw in enumerate(inputs):
        row = results[i]
        if row[-1]:
            failed.append((str(raw), row[-1]))
        writer.writerow([csv_cell(v) for v in [Path(raw).name, str(Path(raw).absolute()), kinds[i], *row]])
    atomic_write(out_path, buf.getvalue())
    return {"n": len(inputs), "output": str(out_path), "slide_maps": [str(m) for m in maps], "failed": failed}
