"""Deterministic synthetic sample data as real files (DICOM, NIfTI, PNG tiles, a tiled TIFF slide).

:func:`write_sample_data` (``lilaw-med sample-data DIR``) writes ``radiology_2d/``, ``radiology_3d/``,
``pathology/`` and ``slide/``, each with ``datalist_clean.json`` (the true labels) and
``datalist.json`` (symmetric noise in training and validation, recorded in
``datalist_noise.csv``; the test split stays clean). The same seed gives the same pixels, UIDs,
splits and noisy labels. What each set holds: sample_data/README.md.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.noise import add_noise_to_datalist
from lilaw_med.errors import InputError
from lilaw_med.utils import atomic_write

__all__ = [
    "CLASS_NAMES",
    "render_chest",
    "render_ct_volume",
    "render_tissue",
    "write_pyramid_tiff",
    "write_sample_data",
]

logger = logging.getLogger(__name__)

CLASS_NAMES = {
    "radiology_2d": ["normal", "opacity"],
    "radiology_3d": ["no_lesion", "lesion"],
    "pathology": ["stroma", "lymphocytes", "tumor"],
    "slide": ["stroma", "lymphocytes", "tumor"],
}
_UID_ROOT = "https://github.com/lilaw-med/lilaw-med/sample-data"


# ---------------------------------------------------------------------------------------------
# renderers (pure numpy; each takes its own Generator so every image is reproducible)


def render_chest(
    rng: np.random.Generator, anatomy: dict[str, float], lesion: bool, size: int = 128
) -> np.ndarray:
    """A 2D chest-radiograph-like image: body, lungs, ribs, mediastinum, spine, optional opacity.

    Args:
        rng: the random generator of this image.
        anatomy: per-patient shape parameters (``lung_scale``, ``brightness``, ``shift``).
        lesion: draw a round opacity (class 1) in one lung field.
        size: output side in pixels.

    Returns:
        (size, size) float32 in [0, 1], bright = dense (MONOCHROME2 sense), row-major (y, x).
    """
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    xx = xx - anatomy["shift"]
    s = anatomy["lung_scale"]
    img = np.full((size, size), 0.08)
    img[(xx / 0.92) ** 2 + (yy / 1.05) ** 2 < 1] = 0.55  # body soft tissue
    lungs = np.zeros_like(img, dtype=bool)
    for side in (-1, 1):
        lungs |= ((xx - side * 0.37) / (0.27 * s)) ** 2 + ((yy + 0.05) / (0.55 * s)) ** 2 < 1
    img[lungs] = 0.22
    ribs = (np.sin((yy + 0.15 * xx**2) * np.pi * 7 + anatomy["rib_phase"]) > 0.55) & lungs
    img[ribs] += 0.12
    img[((xx - 0.08) / 0.2) ** 2 + ((yy - 0.3) / 0.28) ** 2 < 1] = 0.62  # heart / mediastinum
    img[(np.abs(xx) < 0.07) & (yy > -0.9)] = 0.78  # spine
    if lesion:
        side = rng.choice([-1, 1])
        cx = side * 0.37 + rng.uniform(-0.1, 0.1) * s
        cy = -0.05 + rng.uniform(-0.3, 0.3) * s
        sigma = rng.uniform(0.07, 0.12)
        amp = rng.uniform(0.3, 0.5)
        img += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    img = gaussian_filter(img, 1.2) * anatomy["brightness"]
    img += rng.normal(0.0, 0.025, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_ct_volume(
    rng: np.random.Generator, anatomy: dict[str, float], lesion: bool, size: int = 40
) -> np.ndarray:
    """An abdominal-CT-like volume in Hounsfield units: body, liver, spine, optional enhancing lesion.

    Args:
        rng: the random generator of this volume.
        anatomy: per-patient parameters (``body_scale``, ``liver_hu``).
        lesion: draw an enhancing sphere in the liver (class 1).
        size: side in voxels.

    Returns:
        (size, size, size) int16 HU, axes (x, y, z) in RAS order.
    """
    x, y, z = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j, -1 : 1 : size * 1j]
    b = anatomy["body_scale"]
    vol = np.full(x.shape, -1000.0)
    body = (x / (0.9 * b)) ** 2 + (y / (0.7 * b)) ** 2 < 1
    vol[body] = 30.0  # soft tissue / muscle
    vol[body & ((x / (0.92 * b)) ** 2 + (y / (0.72 * b)) ** 2 > 0.8)] = -90.0  # subcutaneous fat
    liver = ((x + 0.35) / 0.38) ** 2 + ((y - 0.1) / 0.35) ** 2 + (z / 0.7) ** 2 < 1
    vol[liver & body] = anatomy["liver_hu"]
    vol[(x**2 + (y + 0.45) ** 2 < 0.02) & body] = 450.0  # vertebra
    if lesion:
        c = np.array([-0.35, 0.1, 0.0]) + rng.uniform(-0.15, 0.15, 3) * np.array([0.6, 0.6, 1.0])
        r = rng.uniform(0.2, 0.3)
        vol[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r**2] = anatomy["liver_hu"] + rng.uniform(
            150, 250
        )
    vol = gaussian_filter(vol, 0.7) + rng.normal(0.0, 12.0, vol.shape)
    return np.clip(np.round(vol), -1024, 3071).astype(np.int16)


def render_tissue(rng: np.random.Generator, tissue: int, size: int = 64) -> np.ndarray:
    """An H&E-like RGB tile of a tissue class.

    Args:
        rng: the random generator of this tile.
        tissue: 0 stroma (pink fibres, sparse elongated nuclei), 1 lymphocytes (dense small
            round dark nuclei), 2 tumor (crowded large irregular pale nuclei).
        size: side in pixels.

    Returns:
        (size, size, 3) uint8 RGB, row-major.
    """
    eosin = np.array([232.0, 160.0, 195.0]) + rng.normal(0, 6, 3)
    hema = np.array([75.0, 40.0, 130.0]) + rng.normal(0, 6, 3)
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), 2.0)
    img = eosin[None, None, :] * (1 + 0.06 * texture[..., None])
    yy, xx = np.mgrid[0:size, 0:size]
    nuclei = np.zeros((size, size))
    if tissue == 0:
        angle = rng.uniform(0, np.pi)
        fibres = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.5, 0.8))
        img *= (1 - 0.12 * (fibres > 0.3))[..., None]
        count, radius, ecc, strength = int(size * size / 350), (1.5, 2.5), 3.0, 0.8
    elif tissue == 1:
        count, radius, ecc, strength = int(size * size / 45), (1.6, 2.6), 1.0, 1.0
    else:
        count, radius, ecc, strength = int(size * size / 140), (3.5, 6.0), 1.4, 0.65
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(*radius)
        a = rng.uniform(0, np.pi)
        # draw in the nucleus's bounding box only: tiles of a slide hold thousands of nuclei
        half = int(np.ceil(r * ecc)) + 1
        y0, y1 = max(0, int(cy) - half), min(size, int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(size, int(cx) + half + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(a) + dy * np.sin(a)) / (r * ecc)
        v = (-dx * np.sin(a) + dy * np.cos(a)) / r
        box = nuclei[y0:y1, x0:x1]
        np.maximum(box, (u**2 + v**2 < 1) * strength, out=box)
    nuclei = gaussian_filter(nuclei, 0.6)
    img = img * (1 - nuclei[..., None]) + hema[None, None, :] * nuclei[..., None]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# writers


def deterministic_uid(*parts: Any) -> str:
    """A valid DICOM UID that is the same for the same ``parts``: ``2.25.`` + a name-based UUID.

    Args:
        parts: what identifies the object (seed, kind, indices); joined with ``/``.

    Returns:
        The UID string.
    """
    # a 2.25 UID from a name-based UUID (ISO/IEC 9834-8): valid without an org root and the
    # same for the same seed (pydicom's generate_uid(prefix=None) is random)
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join([_UID_ROOT, *map(str, parts)])).int)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str,
    monochrome1: bool,
    instance: int,
) -> None:
    # each writer's library loads only for the format asked
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
    stored = np.round(pixels * 4095.0).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = patient
    ds.PatientName = f"Synthetic^{patient}"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = "lilaw-med synthetic sample data"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.4, 0.4]
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_pyramid_tiff(
    path: str | os.PathLike,
    shape: tuple[int, int],
    tile_fn: Any,
    tile: int = 256,
    levels: int = 3,
    mpp: float = 0.5,
    compression: str | None = "zlib",
) -> Path:
    """Writes a tiled pyramid RGB TIFF tile by tile (the full image is never held in memory).

    Args:
        path: the ``.tiff`` to write.
        shape: (height, width) of level 0, multiples of ``tile * 2**(levels-1)``.
        tile_fn: ``tile_fn(level, row, col, tile) -> (tile, tile, 3) uint8`` giving the tile at
            tile-grid position (row, col) of ``level`` (level ``l`` is downsampled by ``2**l``).
        tile: tile side in pixels.
        levels: number of pyramid levels.
        mpp: microns per pixel at level 0 (written as the TIFF resolution).
        compression: tifffile compression (``"zlib"``, ``"jpeg"``, ``None``).

    Returns:
        The path written.
    """
    # each writer's library loads only for the format asked
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = shape
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level in range(levels):
            lh, lw = h >> level, w >> level

            def tiles(level: int = level, lh: int = lh, lw: int = lw) -> Iterator[np.ndarray]:
                for r in range(0, lh // tile):
                    for c in range(0, lw // tile):
                        yield tile_fn(level, r, c, tile)

            res = 1e4 / (mpp * 2**level)  # pixels per cm
            tw.write(
                tiles(),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    os.replace(tmp, path)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    return atomic_write(path, json.dumps(data, indent=1) + "\n")


def _assign_split(n_groups: int, rng: np.random.Generator, test_fraction: float = 0.2) -> np.ndarray:
    order = rng.permutation(n_groups)
    is_test = np.zeros(n_groups, dtype=bool)
    is_test[order[: max(1, round(test_fraction * n_groups))]] = True
    return is_test


def _radiology_2d(out: Path, seed: int, n: int) -> Path:
    rng = np.random.default_rng([seed, 2])
    per_patient = 2
    n_patients = (n + per_patient - 1) // per_patient
    is_test = _assign_split(n_patients, rng)
    train, test = [], []
    for i in range(n):
        p = i // per_patient
        prng = np.random.default_rng([seed, 2, p])  # the patient's anatomy
        anatomy = {
            "lung_scale": prng.uniform(0.85, 1.1),
            "brightness": prng.uniform(0.85, 1.1),
            "shift": prng.uniform(-0.06, 0.06),
            "rib_phase": prng.uniform(0, 2 * np.pi),
        }
        irng = np.random.default_rng([seed, 2, p, i])
        label = int(irng.random() < 0.5)
        img = render_chest(irng, anatomy, bool(label))
        patient = f"SYN{seed:02d}{p:04d}"
        modality = "CR" if p % 3 == 0 else "DX"
        rel = f"images/{patient}_{i % per_patient}.dcm"
        _write_dicom(
            out / rel,
            img,
            patient=patient,
            study_uid=deterministic_uid(seed, "study", p, i),
            series_uid=deterministic_uid(seed, "series", p, i),
            sop_uid=deterministic_uid(seed, "sop", p, i),
            modality=modality,
            monochrome1=modality == "CR",
            instance=1,
        )
        (test if is_test[p] else train).append({"image": rel, "label": label, "group": patient})
    return _write_json(
        out / "datalist_clean.json",
        {"class_names": CLASS_NAMES["radiology_2d"], "training": train, "test": test},
    )


def _radiology_3d(out: Path, seed: int, n: int) -> Path:
    # each writer's library loads only for the format asked
    import nibabel as nib

    rng = np.random.default_rng([seed, 3])
    per_patient = 2
    n_patients = (n + per_patient - 1) // per_patient
    is_test = _assign_split(n_patients, rng)
    train, test = [], []
    for i in range(n):
        p = i // per_patient
        prng = np.random.default_rng([seed, 3, p])
        anatomy = {"body_scale": prng.uniform(0.9, 1.05), "liver_hu": prng.uniform(50, 70)}
        irng = np.random.default_rng([seed, 3, p, i])
        label = int(irng.random() < 0.5)
        vol = render_ct_volume(irng, anatomy, bool(label))
        spacing = (2.0, 2.0, 2.5)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = [-40.0, -40.0, -50.0 + 5.0 * (i % per_patient)]
        img = nib.Nifti1Image(vol, affine)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = b"lilaw-med synthetic CT (HU)"
        rel = f"volumes/SYN{seed:02d}{p:04d}_{i % per_patient}.nii.gz"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, out / rel)
        (test if is_test[p] else train).append(
            {"image": rel, "label": label, "group": f"SYN{seed:02d}{p:04d}"}
        )
    return _write_json(
        out / "datalist_clean.json",
        {"class_names": CLASS_NAMES["radiology_3d"], "training": train, "test": test},
    )


def _pathology(out: Path, seed: int, n: int) -> Path:
    # each writer's library loads only for the format asked
    from PIL import Image

    rng = np.random.default_rng([seed, 4])
    per_slide = 10
    n_slides = (n + per_slide - 1) // per_slide
    is_test = _assign_split(n_slides, rng)
    train, test = [], []
    for i in range(n):
        s = i // per_slide
        irng = np.random.default_rng([seed, 4, s, i])
        label = int(irng.integers(0, 3))
        tile = render_tissue(irng, label)
        rel = f"tiles/slide{s:03d}_{i % per_slide:02d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile).save(out / rel)
        (test if is_test[s] else train).append({"image": rel, "label": label, "group": f"slide{s:03d}"})
    return _write_json(
        out / "datalist_clean.json",
        {"class_names": CLASS_NAMES["pathology"], "training": train, "test": test},
    )


class _SlideTiles:
    """Tiles of a synthetic slide: level 0 rendered per region, lower levels are block means."""

    def __init__(self, seed: int, slide: int, classes: np.ndarray, region: int) -> None:
        self.seed, self.slide, self.classes, self.region = seed, slide, classes, region
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def level0(self, r: int, c: int) -> np.ndarray:
        if (r, c) not in self.cache:
            rng = np.random.default_rng([self.seed, 5, self.slide, r, c])
            # rendered at half resolution and upsampled: a slide holds tens of thousands of nuclei
            half = render_tissue(rng, int(self.classes[r, c]), self.region // 2)
            self.cache[(r, c)] = np.repeat(np.repeat(half, 2, axis=0), 2, axis=1)
        return self.cache[(r, c)]

    def __call__(self, level: int, r: int, c: int, tile: int) -> np.ndarray:
        f = 2**level
        rows = [
            np.concatenate([self.level0(r * f + a, c * f + b) for b in range(f)], axis=1) for a in range(f)
        ]
        big = np.concatenate(rows, axis=0)
        return big.reshape(tile, f, tile, f, 3).mean(axis=(1, 3)).astype(np.uint8)


def _slides(out: Path, seed: int, n_slides: int, side: int, patch: int, per_region: int) -> Path:
    region = 256
    train, test = [], []
    is_test = _assign_split(n_slides, np.random.default_rng([seed, 5]))
    for s in range(n_slides):
        srng = np.random.default_rng([seed, 5, s])
        grid = side // region
        classes = srng.integers(0, 3, size=(grid, grid))
        tile_fn = _SlideTiles(seed, s, classes, region)
        name = f"slide_{s:03d}.tiff"
        write_pyramid_tiff(out / name, (side, side), tile_fn, tile=region, levels=3)
        items = test if is_test[s] else train
        for r in range(grid):
            for c in range(grid):
                for _ in range(per_region):
                    y = r * region + int(srng.integers(0, region - patch))
                    x = c * region + int(srng.integers(0, region - patch))
                    items.append(
                        {
                            "image": name,
                            "location": [y, x],
                            "size": [patch, patch],
                            "level": 0,
                            "label": int(classes[r, c]),
                            "group": f"slide_{s:03d}",
                        }
                    )
    return _write_json(
        out / "datalist_clean.json",
        {"class_names": CLASS_NAMES["slide"], "training": train, "test": test},
    )


def write_sample_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_2d: int = 300,
    n_3d: int = 200,
    n_tiles: int = 300,
    n_slides: int = 5,
    slide_side: int = 1024,
    noise_rate: float = 0.2,
) -> dict[str, Path]:
    """Writes the sample data sets with datalists and injected, recorded label noise.

    Example::

        datalists = write_sample_data("sample_data", n_2d=100, n_3d=40)
        dl = load_datalist(datalists["radiology_2d"])  # the noisy datalist; its sidecar holds the truth

    Args:
        out_dir: the folder to write into (created).
        seed: the seed; the same seed gives the same pixel data, UIDs, splits and labels.
        n_2d: number of 2D DICOM images (2 per synthetic patient).
        n_3d: number of 3D NIfTI volumes (2 per synthetic patient).
        n_tiles: number of RGB pathology tiles (10 per synthetic slide).
        n_slides: number of tiled pyramid TIFF slides.
        slide_side: level-0 side of each slide in pixels (a multiple of 1024).
        noise_rate: symmetric label-noise rate injected into training and validation labels.

    Returns:
        ``{"radiology_2d", "radiology_3d", "pathology", "slide"}`` -> path of each noisy datalist
        JSON (``datalist.json``; the clean one is ``datalist_clean.json`` beside it).

    Raises:
        InputError: for sizes too small to split (fewer than 4 patients, slides or groups).
    """
    out = Path(out_dir)
    if min(n_2d, n_3d) < 8 or n_tiles < 40 or n_slides < 1:
        raise InputError(
            f"sample sizes too small: n_2d={n_2d}, n_3d={n_3d} (>= 8), n_tiles={n_tiles} (>= 40)."
        )
    if slide_side % 1024:
        raise InputError(f"slide_side must be a multiple of 1024 but is {slide_side}.")
    clean = {
        "radiology_2d": _radiology_2d(out / "radiology_2d", seed, n_2d),
        "radiology_3d": _radiology_3d(out / "radiology_3d", seed, n_3d),
        "pathology": _pathology(out / "pathology", seed, n_tiles),
        "slide": _slides(out / "slide", seed, n_slides, slide_side, 64, 4),
    }
    noisy: dict[str, Path] = {}
    for name, path in clean.items():
        dl = load_datalist(path, seed=seed)
        res = add_noise_to_datalist(
            dl, path.with_name("datalist.json"), kind="symmetric", rate=noise_rate, seed=seed
        )
        noisy[name] = res.datalist
        logger.info(
            "%s: %s (noise %s)", name, res.datalist, {k: round(v, 3) for k, v in res.actual_rate.items()}
        )
    return noisy
