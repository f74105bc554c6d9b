"""Images and DICOM series: the run's evaluation chain on each input, a row per input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lilaw_med.training.evaluation import apply_calibration, calibration_args, run_inference
from lilaw_med.training.predict.output import error_row, one_line
from lilaw_med.training.trained_run import TrainedRun

__all__ = ["ImagePreparer", "predict_images"]


def _finite(image: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(image)).all())


class ImagePreparer:
    """The run's evaluation transforms split after the loader, so the raw pixels can be checked:
    a NaN or infinite pixel is refused before intensity scaling could clip it into a valid-looking image."""

    def __init__(self, run: TrainedRun) -> None:
        from monai.transforms import Compose

        chain = run.transforms()
        self.load, self.rest = chain.transforms[0], Compose(list(chain.transforms[1:]))

    def __call__(self, path: Path) -> dict[str, Any]:
        item = self.load({"image": str(path), "id": str(path)})
        if not _finite(item["image"]):
            raise ValueError(f"{path}: NaN or infinite pixel values; no prediction is made for it.")
        item = self.rest(item)
        if not _finite(item["image"]):
            raise ValueError(f"{path}: NaN or infinite values after the run's transforms; no prediction is made for it.")
        return item


def predict_images(
    images: Sequence[tuple[int, Path]], run: TrainedRun, cal: Mapping[str, Any], batch_size: int,
) -> dict[int, list[Any]]:
    """Rows (``predicted_label, predicted_class, num_patches, probs..., error``) by input index; a bad input
    gets its error and no class, and never stops the others."""
    from monai.data import DataLoader, Dataset

    multi, names = run.multi_label, run.output_names
    prepare = ImagePreparer(run)
    rows: dict[int, list[Any]] = {}
    for start in range(0, len(images), batch_size):  # chunk by chunk: memory bounded by one batch of images
        good: list[tuple[int, Path, dict[str, Any]]] = []
        for i, p in images[start : start + batch_size]:
            try:
                good.append((i, p, prepare(p)))
            except Exception as e:  # any reader or transform failure is this input's, not the run's
                rows[i] = error_row(names, one_line(e))
        if not good:
            continue
        loader = DataLoader(Dataset([item for _, _, item in good]), batch_size=len(good), shuffle=False, num_workers=0)
        logits, _, _ = run_inference(run.network, loader, run.device)
        finite = torch.isfinite(logits).all(dim=1).tolist()
        probs, pred = apply_calibration(logits, multi_label=multi, **calibration_args(cal))
        for (i, p, _), ok, pr, pd in zip(good, finite, probs, pred, strict=True):
            if not ok:  # an extreme input can overflow the network: no class rather than a made-up one
                rows[i] = error_row(names, f"{p}: the model's output is not finite; no prediction is made for it.")
            elif multi:
                rows[i] = [";".join(str(int(v)) for v in pd), ";".join(n for n, v in zip(names, pd, strict=True) if v),
                           "", *pr.tolist(), ""]
            else:
                rows[i] = [int(pd), names[int(pd)], "", *pr.tolist(), ""]
    return rows
