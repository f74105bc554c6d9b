"""Image readers: one MONAI ``ImageReader`` that dispatches on the path to the right backend.

* DICOM (a ``.dcm``/``.dicom``/``.ima`` file, a file with the ``DICM`` preamble, or a folder
  holding one series): :class:`DicomReader`, MONAI's ``PydicomReader`` plus MONOCHROME1
  inversion, optional VOI LUT / window, frame order for multi-frame files, a mixed-size series
  check and errors that name the file and transfer syntax;
* NIfTI ``.nii`` / ``.nii.gz``: MONAI's ``NibabelReader``;
* ``.npy``: MONAI's ``NumpyReader``;
* PNG / JPEG / TIFF / BMP: MONAI's ``PILReader``.

Spatial axes follow MONAI's convention for every format (x first: a 2D image is (W, H)), so
files of different formats holding the same picture give the same array.

:func:`read_header` reads only what the pre-flight check needs (shape, dimensionality) without
decoding pixels where the format allows it.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader, NibabelReader, NumpyReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform

__all__ = [
    "DICOM_SUFFIXES",
    "DicomReader",
    "ImageHeader",
    "LoadMedicalImaged",
    "MedicalImageReader",
    "image_kind",
    "is_dicom_file",
    "list_series_files",
    "read_header",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a DICOM suffix, or the ``DICM`` marker at byte 128."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def image_kind(path: str | os.PathLike) -> str:
    """The reader family for a path: ``"dicom_series"``, ``"dicom"``, ``"nifti"``, ``"numpy"`` or ``"pil"``.

    Raises:
        ValueError: when the format is not recognised (the message lists the supported ones).
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom_series"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NUMPY_SUFFIXES):
        return "numpy"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if is_dicom_file(p):
        return "dicom"
    raise ValueError(
        f"{path}: unsupported image format; expected DICOM (file or series folder), NIfTI (.nii/.nii.gz), "
        f".npy, or PNG/JPEG/TIFF/BMP."
    )


def list_series_files(folder: str | os.PathLike) -> list[str]:
    """The DICOM files of a series folder (non-recursive, sorted by name)."""
    return sorted(f for f in glob.glob(os.path.join(str(folder), "*")) if is_dicom_file(f))


def _transfer_syntax(ds: Any) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "unknown transfer syntax (no file meta)"
    return f"{getattr(uid, 'name', '') or 'unknown'} ({uid})"


class DicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` with photometric handling and clear errors.

    On top of the parent (modality LUT: RescaleSlope/Intercept, affine from the patient
    position, series stacking by InstanceNumber), this reader:

    * applies the VOI LUT or the window stored in the file when ``voi_lut`` is set;
    * inverts MONOCHROME1 images (after the VOI step) so that bright means dense for every file;
    * puts the frames of a multi-frame file last, (rows, columns, frames), like a series;
    * refuses a series whose slices have different sizes, naming the folder and the sizes;
    * turns pixel-decoding failures into a ``ValueError`` naming the file and transfer syntax.

    Args:
        voi_lut: apply the file's VOI LUT Sequence, else its WindowCenter/WindowWidth.
        invert_monochrome1: invert MONOCHROME1 pixel data.
        kwargs: passed to ``PydicomReader`` (e.g. ``swap_ij``, ``affine_lps_to_ras``).
    """

    def __init__(self, voi_lut: bool = False, invert_monochrome1: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("prune_metadata", True)
        super().__init__(**kwargs)
        self.voi_lut = voi_lut
        self.invert_monochrome1 = invert_monochrome1

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether every path is a DICOM file or a folder (a series)."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or is_dicom_file(n) for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Reads a file or a series folder (see ``PydicomReader.read``) with clear errors."""
        import pydicom

        for name in [data] if isinstance(data, (str, os.PathLike)) else list(data):
            if Path(name).is_dir() and not list_series_files(name):
                raise ValueError(f"{name}: the folder holds no DICOM files (expected one series).")
        try:
            return super().read(data, **kwargs)
        except pydicom.errors.InvalidDicomError as e:
            shown = data[0] if isinstance(data, (list, tuple)) and len(data) == 1 else data
            raise ValueError(f"{shown}: not a readable DICOM file ({e}).") from e

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        """Array and metadata (see ``PydicomReader.get_data``).

        Projection radiographs (CR/DX/MG) and multi-frame files carry no patient position or
        orientation; the parent then warns and uses the identity affine, which is right for a
        2D classification input, so that warning is not repeated for every image.
        """
        self._samples = 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
            array, meta = super().get_data(data)
        if self._samples > 1:
            # colour (RGB) pixels: the last axis holds the samples, not a spatial dimension
            meta["original_channel_dim"] = -1
            meta["spatial_shape"] = tuple(array.shape[:-1])
        return array, meta

    def _get_meta_dict(self, img: Any) -> dict:
        # the parent converts the whole header to JSON and then keeps five tags: convert those only
        if not self.prune_metadata:
            return super()._get_meta_dict(img)
        meta = {}
        for key in ("00200037", "00200032", "00280030", "52009229", "52009230"):
            tag = int(key, 16)
            if tag in img:
                meta[key] = img[tag].to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1024)
        return meta

    def _combine_dicom_series(self, data: Any, filenames: Sequence[Any]) -> Any:
        shapes = {(int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for ds in data}
        if len(shapes) > 1:
            folder = os.path.dirname(str(filenames[0])) if filenames else "?"
            raise ValueError(f"{folder}: the series mixes slice sizes {sorted(shapes)}; expected one size.")
        return super()._combine_dicom_series(data, filenames)

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        if "PixelData" not in img and "FloatPixelData" not in img and "DoubleFloatPixelData" not in img:
            raise ValueError(
                f"{filename}: no pixel data (Modality {img.get('Modality', '?')}, SOP class "
                f"{getattr(img.get('SOPClassUID'), 'name', img.get('SOPClassUID', '?'))}); expected an image."
            )
        try:
            raw = img.pixel_array
        except Exception as e:  # decoders raise RuntimeError/NotImplementedError/ValueError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{filename}: cannot decode the pixel data (transfer syntax {_transfer_syntax(img)}): {reason}. "
                f"Supported: uncompressed, deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS and "
                f"JPEG 2000 with pylibjpeg (pip install 'lilaw-med[dicom-codecs]')."
            ) from e
        data = apply_modality_lut(raw, img).astype(np.float32, copy=False)
        if self.voi_lut and ("VOILUTSequence" in img or "WindowCenter" in img):
            data = apply_voi_lut(data, img).astype(np.float32, copy=False)
        if self.invert_monochrome1 and img.get("PhotometricInterpretation") == "MONOCHROME1":
            data = data.max() + data.min() - data
        frames = int(img.get("NumberOfFrames", 1) or 1)
        samples = int(img.get("SamplesPerPixel", 1) or 1)
        self._samples = max(getattr(self, "_samples", 1), samples)
        if frames > 1 and data.ndim == (3 if samples == 1 else 4):
            # (frames, rows, cols[, samples]) -> (rows, cols, frames[, samples]) like a stacked series
            data = np.moveaxis(data, 0, 2)
        return np.ascontiguousarray(data)


class MedicalImageReader(ImageReader):
    """Dispatches each path to the DICOM, NIfTI, NumPy or PIL reader (see the module docstring).

    Args:
        voi_lut: apply the VOI LUT / window stored in DICOM files.
        invert_monochrome1: invert MONOCHROME1 DICOM images.
    """

    def __init__(self, voi_lut: bool = False, invert_monochrome1: bool = True) -> None:
        super().__init__()
        self.voi_lut = voi_lut
        self.invert_monochrome1 = invert_monochrome1
        self._readers: dict[str, ImageReader] = {
            "dicom": DicomReader(voi_lut=voi_lut, invert_monochrome1=invert_monochrome1),
            "nifti": NibabelReader(),
            "numpy": NumpyReader(),
            "pil": PILReader(),
        }

    def _backend(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> ImageReader:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        kinds = set()
        for name in names:
            if not Path(name).exists():
                raise FileNotFoundError(f"image not found: {name}")
            kind = image_kind(name)
            kinds.add("dicom" if kind == "dicom_series" else kind)
        if len(kinds) != 1:
            raise ValueError(f"{names}: the paths of one item mix formats {sorted(kinds)}.")
        return self._readers[kinds.pop()]

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether the paths have a supported format."""
        try:
            self._backend(filename)
        except (ValueError, FileNotFoundError):
            return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Reads with the backend for the path; returns ``(backend, image object)``."""
        backend = self._backend(data)
        return backend, backend.read(data, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array and metadata from what :meth:`read` returned."""
        backend, obj = img
        return backend.get_data(obj)


class LoadMedicalImaged(MapTransform):
    """``LoadImaged`` with :class:`MedicalImageReader`, whose errors reach the caller unwrapped.

    MONAI's ``LoadImaged`` tries readers in turn and folds their tracebacks into one
    ``RuntimeError``; here the reader is given at call time, so the error that names the file
    and what is wrong is the one raised.

    Args:
        keys: the keys holding paths.
        voi_lut: apply the VOI LUT / window stored in DICOM files.
        invert_monochrome1: invert MONOCHROME1 DICOM images.
        ensure_channel_first: put the channel first ((C, spatial...)).
        dtype: the output dtype.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        voi_lut: bool = False,
        invert_monochrome1: bool = True,
        ensure_channel_first: bool = True,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = MedicalImageReader(voi_lut=voi_lut, invert_monochrome1=invert_monochrome1)
        self._loader = LoadImage(
            reader=self.reader, image_only=True, ensure_channel_first=ensure_channel_first, dtype=dtype
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._loader(d[key], reader=self.reader)
        return d


@dataclass(frozen=True)
class ImageHeader:
    """What the pre-flight check needs to know about an image without decoding it all.

    Attributes:
        kind: the reader family (see :func:`image_kind`).
        shape: the spatial shape (channels and samples excluded), file order.
        channels: samples per pixel / colour channels (1 for grey).
        decoded: whether pixel values were read (so NaN/inf could be checked).
        finite: ``False`` when decoded pixels hold NaN or inf; ``None`` when not decoded.
    """

    kind: str
    shape: tuple[int, ...]
    channels: int = 1
    decoded: bool = False
    finite: bool | None = None

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions."""
        return sum(1 for s in self.shape if s > 1) if len(self.shape) > 2 else len(self.shape)


def read_header(path: str | os.PathLike, decode: bool = False) -> ImageHeader:
    """Reads an image's header (shape, channels) without decoding pixels where possible.

    Pixels are decoded when ``decode`` is set, and always for floating-point data that can hold
    NaN/inf cheaply (NIfTI and ``.npy`` float arrays, DICOM float pixel data), so the check can
    report them.

    Args:
        path: an image file or a DICOM series folder.
        decode: decode the pixels too (checks decodability and finiteness).

    Returns:
        The :class:`ImageHeader`.

    Raises:
        FileNotFoundError: when the path does not exist.
        ValueError: for an unreadable, truncated or pixel-less file, a series with mixed sizes,
            or an unsupported format; the message names the file and what is wrong.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    kind = image_kind(p)
    if kind in ("dicom", "dicom_series"):
        return _dicom_header(p, kind, decode)
    if kind == "nifti":
        import nibabel as nib

        try:
            img = nib.load(str(p))
            shape = tuple(int(s) for s in img.shape)
            finite = None
            is_float = np.issubdtype(img.get_data_dtype(), np.floating)
            if decode or is_float:
                arr = np.asanyarray(img.dataobj)
                finite = bool(np.isfinite(arr).all())
        except Exception as e:
            raise ValueError(f"{p}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
        return ImageHeader(kind, shape, 1, decode or is_float, finite)
    if kind == "numpy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{p}: not a readable .npy file ({type(e).__name__}: {e}).") from e
        shape = tuple(int(s) for s in arr.shape)
        finite = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.floating) else True
        return ImageHeader(kind, shape, 1, True, finite)
    # PIL formats: the header gives size and mode; decoding detects truncation
    from PIL import Image

    try:
        with Image.open(p) as im:
            size, bands = im.size, len(im.getbands())
            if decode:
                im.load()
    except Exception as e:
        raise ValueError(f"{p}: not a readable image file ({type(e).__name__}: {e}).") from e
    return ImageHeader(kind, (int(size[0]), int(size[1])), bands, decode, True if decode else None)


def _dicom_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    import pydicom

    files = [str(p)] if kind == "dicom" else list_series_files(p)
    if not files:
        raise ValueError(f"{p}: the folder holds no DICOM files (expected one series).")
    sizes: dict[tuple[int, int], list[str]] = {}
    frames, channels, finite = 1, 1, None
    for f in files:
        try:
            # header mode: large values (the pixels) stay on disk, their position and length known
            ds = pydicom.dcmread(f, defer_size=None if decode else 1024)
        except Exception as e:
            raise ValueError(f"{f}: not a readable DICOM file ({type(e).__name__}: {e}).") from e
        if "Rows" not in ds or "Columns" not in ds:
            raise ValueError(
                f"{f}: no image (no Rows/Columns; Modality {ds.get('Modality', '?')}); expected pixel data."
            )
        try:
            sizes.setdefault((int(ds.Rows), int(ds.Columns)), []).append(os.path.basename(f))
            frames = max(frames, int(ds.get("NumberOfFrames", 1) or 1))
            channels = int(ds.get("SamplesPerPixel", 1) or 1)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{f}: invalid image header value ({e}); expected integers in Rows, Columns, NumberOfFrames, SamplesPerPixel."
            ) from e
        if not decode:
            # the pixels were not read: check they are there and complete
            _check_pixel_element(f, ds)
        if decode:
            arr = DicomReader()._get_array_data(ds, f)
            ok = bool(np.isfinite(arr).all())
            finite = ok if finite is None else (finite and ok)
    if len(sizes) > 1:
        desc = ", ".join(f"{r}x{c} ({len(v)} files, e.g. {v[0]})" for (r, c), v in sorted(sizes.items()))
        raise ValueError(f"{p}: the series mixes slice sizes: {desc}; expected one size.")
    (rows, cols) = next(iter(sizes))
    if kind == "dicom_series":
        if frames > 1:
            raise ValueError(f"{p}: a series of multi-frame files; expected single-frame slices.")
        shape: tuple[int, ...] = (cols, rows, len(files)) if len(files) > 1 else (cols, rows)
    else:
        shape = (cols, rows, frames) if frames > 1 else (cols, rows)
    return ImageHeader(kind, shape, channels, decode, finite)


def _check_pixel_element(filename: str, ds: Any) -> None:
    """Checks, from a header read with deferred values, that the pixel data is there and complete."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError(
            f"{filename}: no pixel data (Modality {ds.get('Modality', '?')}); expected an image."
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return  # encapsulated: the length is not known from the header
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if elem is None:
        return
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * frames * samples * bits // 8
    size = os.path.getsize(filename)
    offset = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return
    if length < expected or (offset is not None and offset + length > size):
        raise ValueError(
            f"{filename}: truncated pixel data: expected {expected} bytes for {ds.Rows}x{ds.Columns}"
            f"x{frames} frame(s) of {bits} bits, the file holds {min(length, size - (offset or 0))}."
        )
