"""Images and DICOM series: each input decoded once in a loader worker, checked, and scored batch by batch."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, list_data_collate
from monai.transforms import Compose

from lilaw_med.errors import InputError
from lilaw_med.training.evaluation import apply_calibration, calibration_args, run_inference
from lilaw_med.workflows.predict.inputs import check_input, check_loaded_shape, is_picture
from lilaw_med.workflows.predict.output import error_cell, error_row
from lilaw_med.workflows.trained_run import TrainedRun

__all__ = ["ImagePreparer", "auto_num_workers", "predict_images"]

_MAX_AUTO_WORKERS = 8


def auto_num_workers() -> int:
    """Loader workers when none are asked for: one per core this process may use, less one for the
    main process (which runs the network and writes the rows), at most 8; 0 on one core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    return max(0, min(_MAX_AUTO_WORKERS, cores - 1))


def _finite(image: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(image)).all())


class ImagePreparer:
    """One input through the run's evaluation chain, or the one-line reason it cannot be predicted.

    The chain is split after its loading transform, so the raw pixels can be checked: a NaN or
    infinite pixel is refused before intensity scaling could clip it into a valid-looking image.
    The verdict on the file is the pre-flight's (:func:`~lilaw_med.workflows.predict.inputs.check_input`);
    PNG/JPEG/TIFF pixels are decoded once, by the loading transform, whose reader refuses the same
    files for the same reasons as ``read_header``'s own decode (see :func:`check_loaded_shape`).

    Args:
        run: the trained run.
    """

    def __init__(self, run: TrainedRun) -> None:

        chain = run.transforms()
        self.load, self.rest = chain.transforms[0], Compose(list(chain.transforms[1:]))
        self.spatial_dims = run.spatial_dims

    def __call__(self, path: str | os.PathLike) -> dict[str, Any]:
        """The transformed item ``{"image", "id"}``.

        Raises:
            FileNotFoundError, ValueError: one line naming the input and what is wrong with it.
        """
        picture = is_picture(path)
        if not picture:
            check_input(path, self.spatial_dims)
        item = self.load({"image": str(path), "id": str(path)})
        if picture:
            check_loaded_shape(path, tuple(item["image"].shape[1:]), self.spatial_dims)
        if not _finite(item["image"]):
            raise InputError(f"{path}: NaN or infinite pixel values; no prediction is made for it.")
        item = self.rest(item)
        if not _finite(item["image"]):
            raise InputError(f"{path}: NaN or infinite values after the run's transforms; no prediction is made for it.")
        return item


class _PreparedInputs(torch.utils.data.Dataset):
    """The inputs as a map-style dataset whose items never raise: ``{"item": ...}`` or ``{"error": line}``."""

    def __init__(self, paths: Sequence[str | os.PathLike], prepare: ImagePreparer) -> None:
        self.paths, self.prepare = paths, prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return {"item": self.prepare(self.paths[index])}
        except Exception as e:  # any reader or transform failure is this input's, not the run's
            return {"error": error_cell(e)}


def _collate(samples: list[dict[str, Any]]) -> tuple[Any, list[str | None]]:
    """``(MONAI batch of the good items or None, per sample: None or its error)``."""

    good = [s["item"] for s in samples if "item" in s]
    return (list_data_collate(good) if good else None), [s.get("error") for s in samples]


def predict_images(
    paths: Sequence[str | os.PathLike], run: TrainedRun, cal: Mapping[str, Any], batch_size: int,
    num_workers: int = 0,
) -> Iterator[list[list[Any]]]:
    """Rows for ``paths``, one batch at a time, in order.

    Each row holds ``predicted_label, predicted_class, num_patches, probs..., error``; a bad input
    gets its error and no class, and never stops the others. Memory holds one batch per worker
    (and the loader's prefetch), whatever the number of inputs.

    Example::

        for rows in predict_images(["a.png", "b.png"], run, run.calibration(), batch_size=32):
            writer.write_rows(rows)

    Args:
        paths: image files or DICOM series folders.
        run: the trained run.
        cal: the calibration to apply.
        batch_size: inputs per batch.
        num_workers: loader worker processes that read and transform the inputs (0: this process).

    Yields:
        The rows of one batch of inputs.
    """

    multi, names = run.multi_label, run.output_names
    loader = DataLoader(
        _PreparedInputs(paths, ImagePreparer(run)), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate, pin_memory=run.device.type == "cuda",
    )
    position = 0
    for batch, errors in loader:
        rows: list[list[Any]] = [error_row(names, e) if e else [] for e in errors]
        good = [k for k, e in enumerate(errors) if not e]
        if batch is not None:
            logits, _, _ = run_inference(run.network, [batch], run.device)
            finite = torch.isfinite(logits).all(dim=1).tolist()
            probs, pred = apply_calibration(logits, multi_label=multi, **calibration_args(cal))
            for k, ok, pr, pd in zip(good, finite, probs, pred, strict=True):
                if not ok:  # an extreme input can overflow the network: no class rather than a made-up one
                    why = f"{paths[position + k]}: the model's output is not finite; no prediction is made for it."
                    rows[k] = error_row(names, why)
                elif multi:
                    rows[k] = [";".join(str(int(v)) for v in pd),
                               ";".join(n for n, v in zip(names, pd, strict=True) if v), "", *pr.tolist(), ""]
                else:
                    rows[k] = [int(pd), names[int(pd)], "", *pr.tolist(), ""]
        position += len(errors)
        yield rows
