"""MedMNIST-style ``.npz`` arrays written out as real image files with a datalist.

An npz with ``train_images``/``train_labels``, ``val_images``/``val_labels`` and
``test_images``/``test_labels`` (MedMNIST v2 layout) becomes::

    OUT/images/{train,val,test}_00000.{png,dcm,nii.gz}
    OUT/datalist.json     decathlon-style: training / validation / test, ids "train_00000", ...

Images (N, H, W) are grey, (N, H, W, 3) colour, (N, D, H, W) volumes (always NIfTI). Labels
(N,) or (N, 1) are class indices, (N, L) with L > 1 multi-label flags. Writing through the real
file formats makes the pipelines exercise the same readers as a user's data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.sample import deterministic_uid
from lilaw_med.errors import InputError
from lilaw_med.utils import atomic_write

__all__ = ["import_npz", "write_image"]

logger = logging.getLogger(__name__)

_SPLITS = (("train", "training"), ("val", "validation"), ("test", "test"))
_EXT = {"png": ".png", "dicom": ".dcm", "nifti": ".nii.gz"}


def write_image(
    array: np.ndarray, path: str | os.PathLike, fmt: str, modality: str = "OT", uid_seed: str = ""
) -> Path:
    """Writes one image array in a file format.

    Args:
        array: (H, W) grey, (H, W, 3) RGB, or (D, H, W) volume; uint8 or uint16.
        path: the destination.
        fmt: ``"png"``, ``"dicom"`` or ``"nifti"`` (volumes must be ``"nifti"``).
        modality: DICOM Modality tag.
        uid_seed: entropy for deterministic DICOM UIDs.

    Returns:
        The path written.

    Raises:
        InputError: for an unsupported shape/format combination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_rgb = array.ndim == 3 and array.shape[-1] == 3
    is_volume = array.ndim == 3 and not is_rgb
    if fmt == "nifti":
        # each writer's library loads only for the format asked
        import nibabel as nib

        if is_rgb:
            raise InputError(f"{path}: RGB images cannot be written as NIfTI here; use png or dicom.")
        # NIfTI stores x first: transpose the row-major array so that every format gives the same
        # array through MONAI's readers (which put x first)
        data = np.ascontiguousarray(array.T)
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return path
    if is_volume:
        raise InputError(f"{path}: a volume of shape {array.shape} must be written as nifti, not {fmt}.")
    if fmt == "png":
        # each writer's library loads only for the format asked
        from PIL import Image

        Image.fromarray(array).save(path)
        return path
    if fmt == "dicom":
        _write_dicom(array, path, modality, uid_seed)
        return path
    raise InputError(f"format must be png, dicom or nifti but is {fmt!r}.")


def _write_dicom(array: np.ndarray, path: Path, modality: str, uid_seed: str) -> None:
    # each writer's library loads only for the format asked
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    def uid(kind: str) -> str:
        return deterministic_uid("npz", uid_seed, kind)

    sop = uid("sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = modality
    ds.PatientID = f"NPZ-{uid_seed}"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = array.shape[:2]
    rgb = array.ndim == 3
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    bits = 16 if array.dtype == np.uint16 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(array.astype(np.uint16 if bits == 16 else np.uint8)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def import_npz(
    npz_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "png",
    class_names: list[str] | None = None,
    limit: int | None = None,
    modality: str = "OT",
) -> Path:
    """Writes the arrays of a MedMNIST-style npz as image files and a decathlon datalist.

    Args:
        npz_path: the ``.npz`` file.
        out_dir: the output folder (created).
        fmt: ``"png"``, ``"dicom"`` or ``"nifti"``; volumes are always written as NIfTI.
        class_names: the class names written to the datalist.
        limit: at most this many images per split.
        modality: DICOM Modality tag.

    Returns:
        The path of ``datalist.json``.

    Example::

        path = import_npz("pneumoniamnist.npz", "data/pneumonia", fmt="dicom", class_names=["normal", "pneumonia"])
        dl = load_datalist(path)  # ids train_00000, ...; validation from val_images

    Raises:
        FileNotFoundError: when the npz is missing.
        InputError: when it lacks the expected arrays or they disagree in length.
    """
    npz_path, out = Path(npz_path), Path(out_dir)
    data, found = _open_npz(npz_path, fmt)
    result: dict[str, Any] = {"class_names": class_names}
    multi = False
    for prefix, split in _SPLITS:
        if prefix not in found:
            continue
        images, labels = _split_arrays(data, prefix, npz_path)
        multi = multi or labels.ndim == 2
        n = len(images) if limit is None else min(limit, len(images))
        result[split] = [
            _write_item(np.asarray(images[i]), labels[i], f"{prefix}_{i:05d}", out, fmt, modality, npz_path.stem)
            for i in range(n)
        ]
        logger.info("%s: wrote %d %s image(s)", split, n, fmt)
    result["multi_label"] = multi
    return atomic_write(out / "datalist.json", json.dumps(result, indent=1) + "\n")


def _open_npz(npz_path: Path, fmt: str) -> tuple[Any, list[str]]:
    """The npz's arrays and the split prefixes that have both images and labels."""
    if not npz_path.is_file():
        raise FileNotFoundError(f"npz file not found: {npz_path}")
    if fmt not in _EXT:
        raise InputError(f"format must be one of {sorted(_EXT)} but is {fmt!r}.")
    data = np.load(npz_path, allow_pickle=False)
    found = [p for p, _ in _SPLITS if f"{p}_images" in data and f"{p}_labels" in data]
    if not found:
        raise InputError(
            f"{npz_path}: expected arrays train_images/train_labels (and val_, test_) but has {sorted(data)}."
        )
    return data, found


def _split_arrays(data: Any, prefix: str, npz_path: Path) -> tuple[Any, np.ndarray]:
    """A split's images and labels (one label column flattened to class indices)."""
    images, labels = data[f"{prefix}_images"], np.asarray(data[f"{prefix}_labels"])
    if len(images) != len(labels):
        raise InputError(
            f"{npz_path}: {prefix}_images has {len(images)} entries but {prefix}_labels {len(labels)}."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    return images, labels


def _write_item(
    img: np.ndarray, label: np.ndarray, item_id: str, out: Path, fmt: str, modality: str, stem: str
) -> dict[str, Any]:
    """Writes one image (a grey volume always as NIfTI) and returns its datalist item."""
    is_volume = img.ndim == 3 and img.shape[-1] != 3
    f = "nifti" if is_volume else fmt
    rel = f"images/{item_id}{_EXT[f]}"
    write_image(img, out / rel, f, modality=modality, uid_seed=f"{stem}-{item_id}")
    value = label.astype(int).tolist() if np.ndim(label) == 1 else int(label)
    return {"id": item_id, "image": rel, "label": value}
