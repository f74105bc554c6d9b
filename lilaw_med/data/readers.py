"""Image readers: one MONAI ``ImageReader`` that dispatches on the path to the right backend.

* DICOM (a ``.dcm``/``.dicom``/``.ima`` file, a file with the ``DICM`` preamble, or a folder
  holding one series): :class:`DicomReader`, MONAI's ``PydicomReader`` plus MONOCHROME1
  inversion, palette colour through the file's lookup tables, optional VOI LUT / window, frame
  order for multi-frame files, a mixed-size series check and errors that name the file, the
  transfer syntax, the decoders' own reasons and the package that would add a decoder;
* NIfTI ``.nii`` / ``.nii.gz``: :class:`NiftiReader`, MONAI's ``NibabelReader`` that refuses
  4D, CIFTI and non-real voxel data instead of passing them on as channels; each file is opened
  once, a small ``.nii.gz`` read and inflated in one go (:func:`_read_nifti_gz`);
* ``.npy``: MONAI's ``NumpyReader``;
* PNG / JPEG / TIFF / BMP: MONAI's ``PILReader`` (palette, CMYK and YCbCr pictures as RGB).

Spatial axes follow MONAI's convention for every format (x first: a 2D image is (W, H)), so
files of different formats holding the same picture give the same array.

**One verdict per file.** :func:`read_header` is the check that the pre-flight (training and
``validate-data``) and ``predict`` run on every input. It refuses exactly what the loader
refuses, with the same rules (:func:`dicom_image_problem`, :func:`nifti_problem`), and reads as
little as the format allows while staying truthful:

* DICOM, native (uncompressed) transfer syntaxes: pydicom's own size rule for the syntax, from
  the header (YBR_FULL_422 holds 2 bytes per pixel, 1-bit data is packed, odd lengths are
  padded); deflated files are inflated first (the header's offsets refer to the inflated data);
* DICOM, compressed (encapsulated) transfer syntaxes: the pixel data is decoded with the
  installed decoders, exactly as training will decode it, since only a decoder can tell whether
  it reads a stream;
* NIfTI: the header (float data is read to look for NaN/inf); ``.npy``: the array header;
* PNG/JPEG/TIFF/BMP: decoded by Pillow, as the loader will (only decoding tells whether a PNG
  or JPEG stream is complete).

**Bounded resources.** Before any pixel is allocated, the size a header declares (NIfTI: shape x
voxel type; DICOM: Rows x Columns x frames x samples x bits, summed over a series; PIL/TIFF: the
page's width x height x bands x bits) is checked against :func:`max_image_bytes` (4 GiB, or
``$LILAW_MED_MAX_IMAGE_BYTES``); a larger one is refused in one line naming the file and the size.
Only regular files are ever opened: a FIFO, socket or device given as an input, or lying in a DICOM
series folder, is never opened (opening a FIFO blocks until a writer comes); a symbolic link in a
series folder that loops or points nowhere is one line naming it.
"""

from __future__ import annotations

import errno
import importlib.metadata
import io
import math
import os
import re
import stat
import warnings
import zlib
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
    "NiftiReader",
    "decoder_environment",
    "dicom_image_problem",
    "image_kind",
    "is_dicom_file",
    "list_series_files",
    "max_image_bytes",
    "nifti_problem",
    "read_header",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# pydicom names a decoder plugin's requirements by import name; pip needs the distribution name
_DISTRIBUTION = {"gdcm": "python-gdcm"}
# the distributions that decide which DICOM streams decode (see decoder_environment)
_CODEC_DISTRIBUTIONS = (
    "pydicom",
    "pillow",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "python-gdcm",
    "pyjpegls",
    "nibabel",
    "monai",
)
# PIL modes whose bands are not grey or RGB(A) samples: converted when read (PILReader's converter)
_PIL_CONVERT = {"P": "RGB", "PA": "RGB", "LA": "L", "CMYK": "RGB", "YCbCr": "RGB"}
# bits per band of PIL modes other than 8-bit ones
_PIL_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}

MAX_IMAGE_BYTES_ENV = "LILAW_MED_MAX_IMAGE_BYTES"
"""The environment variable that sets the largest image (declared bytes) a reader accepts."""
DEFAULT_MAX_IMAGE_BYTES = 4 * 2**30
"""4 GiB: a 2048 x 2048 x 512 float32 volume; far beyond a 2D radiograph or a CT series."""


def max_image_bytes() -> int:
    """The largest size in bytes an image's header may declare: ``$LILAW_MED_MAX_IMAGE_BYTES``, else
    :data:`DEFAULT_MAX_IMAGE_BYTES`.

    Returns:
        The limit.

    Raises:
        ValueError: when the variable is set but not a positive integer.
    """
    value = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_IMAGE_BYTES_ENV} must be a positive number of bytes but is {value!r}.")
    return limit


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} bytes" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


def _size_problem(shape: Sequence[int], bits: int, what: str) -> str | None:
    """Why an image whose header declares ``shape`` elements of ``bits`` bits is too large to read, or ``None``.

    Args:
        shape: the declared dimensions.
        bits: bits per element.
        what: what the elements are (``"voxels of int16"``), for the message.

    Returns:
        One line (without the file name), or ``None`` when it is within :func:`max_image_bytes`.
    """
    dims = " x ".join(str(int(d)) for d in shape)
    return _bytes_problem(-(-math.prod(int(d) for d in shape) * int(bits) // 8), f"{dims} {what}")


def _bytes_problem(nbytes: int, what: str) -> str | None:
    """Why ``nbytes`` declared by a header (described by ``what``) are too many, or ``None``."""
    limit = max_image_bytes()
    if nbytes <= limit:
        return None
    return (
        f"the header declares {what} ({_human(nbytes)}), more than the {_human(limit)} an image may take "
        f"(${MAX_IMAGE_BYTES_ENV}); not read."
    )


def _not_regular(path: str | os.PathLike) -> str | None:
    """Why a path that is not a folder must not be opened (a FIFO, socket or device), or ``None``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the caller's open says so
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = (
        "a FIFO" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )  # fmt: skip
    return f"{kind}, not an image file; it was not opened (reading one can block forever)."


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular DICOM file: a DICOM suffix, or the ``DICM`` marker at byte 128.

    A FIFO, socket or device is never one, and is never opened: opening a FIFO blocks until a writer
    comes (``O_NONBLOCK`` keeps even a FIFO swapped in after the check from blocking).
    """
    p = Path(path)
    if not p.is_file():  # follows links; False for FIFOs, devices, sockets, folders, loops
        return False
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, 132, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
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
    """The DICOM files of a series folder: its regular files (or links to one) that are DICOM files,
    non-recursive, hidden names excluded, sorted by name.

    Nothing but regular files is opened: FIFOs, sockets, devices and sub-folders are left out (MONAI's
    reader would open every entry, and a FIFO blocks it forever).

    Args:
        folder: the series folder.

    Returns:
        The file paths.

    Raises:
        ValueError: for a symbolic link in the folder that loops or points nowhere (one line naming it:
            a slice of the series may be missing).
        OSError: when the folder cannot be listed.
    """
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                mode = os.stat(entry.path).st_mode  # through links
            except OSError as e:
                if entry.is_symlink():
                    how = "loops" if e.errno == errno.ELOOP else "points nowhere"
                    raise ValueError(
                        f"{entry.path}: a symbolic link that {how} ({e.strerror}) in the series folder; expected "
                        f"the series' DICOM files."
                    ) from None
                continue  # removed while listing
            if stat.S_ISREG(mode) and is_dicom_file(entry.path):
                files.append(entry.path)
    return sorted(files)


def decoder_environment() -> str:
    """The installed versions of the packages that decide what a file decodes to.

    The pre-flight manifest stores verdicts under this string, so installing a codec (or
    another pydicom) makes files refused for want of a decoder be checked again.

    Returns:
        ``"name=version;..."`` over pydicom, its decoder plugins' packages, nibabel and MONAI
        (``-`` for a missing one).
    """
    versions = []
    for dist in _CODEC_DISTRIBUTIONS:
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=-")
    return ";".join(versions)


def _one_line(error: BaseException | str) -> str:
    """An exception's message on one line (pydicom lists one decoder per line)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        return lines[0]
    if lines[0].endswith(":"):
        # pydicom's "Unable to decode as exceptions were raised by all available plugins:" and
        # one "plugin: reason" line each: the reasons are the message
        return "; ".join(lines[1:])
    return "; ".join(lines)


# ---------------------------------------------------------------------------------------- DICOM
def _syntax(ds: Any) -> Any:
    """The dataset's Transfer Syntax UID, or ``None`` when the file meta has none."""
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _transfer_syntax(ds: Any) -> str:
    uid = _syntax(ds)
    if uid is None:
        return "no transfer syntax in the file meta"
    name = getattr(uid, "name", "") or ""
    return f"transfer syntax '{name}' ({uid})" if name and name != str(uid) else f"transfer syntax {uid}"


def _syntax_family(uid: Any) -> str:
    """``"native"``, ``"deflated"``, ``"encapsulated"`` or ``"unknown"`` (no or an unlisted UID)."""
    if uid is None:
        return "unknown"
    try:
        if uid.is_deflated:
            return "deflated"
        return "encapsulated" if uid.is_encapsulated else "native"
    except ValueError:  # pydicom raises for a UID that is not a transfer syntax it knows
        return "unknown"


def _sop_class(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    return str(getattr(uid, "name", "") or uid or "?")


def _dicom_geometry(ds: Any, filename: str | os.PathLike) -> tuple[int, int, int, int]:
    """``(rows, columns, frames, samples)`` of an image dataset.

    Raises:
        ValueError: when a value is not an integer (e.g. pydicom's ``badVR.dcm``).
    """
    try:
        return (
            int(ds.Rows),
            int(ds.Columns),
            int(ds.get("NumberOfFrames", 1) or 1),
            int(ds.get("SamplesPerPixel", 1) or 1),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{filename}: invalid image header value ({_one_line(e)}); expected integers in Rows, Columns, "
            f"NumberOfFrames, SamplesPerPixel."
        ) from e


def _dicom_bits(ds: Any) -> int:
    """BitsAllocated (16 when absent or not a positive integer: the size check still bounds the rest)."""
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return 16
    return bits if bits > 0 else 16


def dicom_image_problem(ds: Any, filename: str | os.PathLike) -> str | None:
    """Why a DICOM dataset is not an image this toolkit classifies, or ``None`` when it is one.

    The rules (the loader and the pre-flight both apply them):

    * no data elements at all (pydicom's reading of a file cut short), no pixel data, or pixel
      data without Rows/Columns: not an image;
    * a segmentation (SEG: Modality ``SEG``, Segmentation Storage or a SegmentSequence, typically
      1-bit): a label map, not an image to classify;
    * a multi-frame colour file (RGB, YBR or palette colour with more than one frame, e.g. an
      ultrasound cine or a 2-frame RGB capture): frames of colour pictures are not a volume;
    * palette colour without its lookup tables;
    * Rows x Columns x frames x samples x BitsAllocated above :func:`max_image_bytes`.

    Grey multi-frame files are volumes (frames last); single colour pictures are 2D with 3 channels.

    Args:
        ds: the dataset (pixel data may be deferred).
        filename: the file, for the messages of invalid header values.

    Returns:
        The reason (one line, without the file name), or ``None``.

    Raises:
        ValueError: when Rows/Columns/NumberOfFrames/SamplesPerPixel are not integers.
    """
    where = f"Modality {ds.get('Modality', '?')}, SOP class {_sop_class(ds)}"
    if len(ds) == 0:
        # pydicom returns an empty dataset when the file ends inside an element (it only warns)
        return "not a readable DICOM file: no data elements after the file meta (cut short?)."
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return f"no image: the file holds no pixel data ({where}); expected an image."
    if "Rows" not in ds or "Columns" not in ds:
        return f"no image: pixel data without Rows/Columns ({where}); expected an image."
    rows, cols, frames, samples = _dicom_geometry(ds, filename)
    bits = _dicom_bits(ds)
    too_large = _size_problem(
        (rows, cols, frames, samples), bits, f"(Rows x Columns x frames x samples) pixels of {bits} bits"
    )
    if too_large:
        return too_large
    if (
        ds.get("Modality") == "SEG"
        or str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE
        or "SegmentSequence" in ds
    ):
        kind = ds.get("SegmentationType", "?")
        return (
            f"a DICOM segmentation (SEG, {ds.get('BitsAllocated', '?')}-bit {kind}, {frames} frame(s)): a label map, "
            f"not an image to classify; list the image it segments instead."
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    colour = samples > 1 or photometric == "PALETTE COLOR"
    if colour and frames > 1:
        return (
            f"a multi-frame colour file ({frames} frames of {photometric or 'colour'}, {where}; e.g. a cine): "
            f"colour frames are not a volume; expected one colour picture or a grey volume (save one frame per file)."
        )
    if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in ds:
        return "PALETTE COLOR without its palette (no Red/Green/Blue Palette Color Lookup Table); expected the tables."
    return None


def _missing_codec_packages(uid: Any) -> list[str]:
    """For pydicom's decoder plugins of ``uid`` that lack a dependency: ``"label (pip install dist ...)"``.

    Only distributions that are not installed are named (installing one already there fixes nothing).
    """
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):
        return []
    out = []
    # pydicom's public list reads "label - requires a>=1, b and c>=2"
    for line in decoder.missing_dependencies:
        label, _, requires = line.partition(" - requires ")
        missing = []
        for req in re.split(r",\s*|\s+and\s+", requires):
            name = re.match(r"[A-Za-z0-9_.\-]+", req.strip())
            if name is None or name.group(0) == "numpy":
                continue
            dist = _DISTRIBUTION.get(name.group(0), name.group(0))
            try:
                importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                missing.append(dist)
        if missing:
            out.append(f"{label.strip()} (pip install {' '.join(missing)})")
    return out


def _decode_error(filename: str | os.PathLike, ds: Any, error: BaseException) -> ValueError:
    """The one-line error for pixel data that did not decode: the decoders' reasons and the fix."""
    from pydicom.pixels import get_decoder

    uid = _syntax(ds)
    family = _syntax_family(uid)
    head = f"{filename}: cannot decode the pixel data of {_transfer_syntax(ds)}"
    reason = _one_line(error)
    if family == "unknown" or isinstance(error, NotImplementedError):
        return ValueError(
            f"{head}: pydicom has no decoder for this transfer syntax, so no installed decoder can read this file "
            f"(convert it to an uncompressed or a JPEG/JPEG-LS/JPEG 2000/RLE syntax)."
        )
    # RuntimeError: pydicom tried the plugins (or had none); other errors come from the header's
    # values (group 0028, lengths), which no codec would change
    if family != "encapsulated" or not isinstance(error, RuntimeError):
        return ValueError(f"{head}: {reason}.")
    packages = _missing_codec_packages(uid)
    if not get_decoder(uid).is_available:
        fix = (
            f"pydicom's decoders for it: {' or '.join(packages)}"
            if packages
            else "pydicom lists no decoder to install"
        )
        return ValueError(f"{head}: no installed decoder can read this transfer syntax; {fix}.")
    others = f"; pydicom's other decoders for it: {' or '.join(packages)}" if packages else ""
    return ValueError(f"{head}: {reason}; no installed decoder can read this file{others}.")


def _decode_dicom(ds: Any, filename: str | os.PathLike) -> np.ndarray:
    """Decodes the pixel data as stored (frames first, samples last), palette colour through its LUT.

    Raises:
        ValueError: one line naming the file, the transfer syntax, the decoders' reasons and
            what to install (see :func:`_decode_error`).
    """
    from pydicom.pixels import apply_color_lut

    try:
        raw = ds.pixel_array
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            # the stored values index the palette: colours come from the file's lookup tables
            raw = apply_color_lut(raw, ds)
    except Exception as e:  # decoders raise RuntimeError/NotImplementedError/ValueError/AttributeError
        raise _decode_error(filename, ds, e) from e
    return raw


def _check_native_pixels(filename: str, ds: Any, inflated: bool) -> None:
    """pydicom's size rule for uncompressed pixel data, without reading the pixels.

    The expected length comes from pydicom's decoder (YBR_FULL_422 holds two bytes per pixel,
    1-bit data is packed, an odd length is padded to even); the element must hold at least that
    and, when its value was left on disk (a read with ``defer_size``), lie inside the file.
    The loader applies it too, so that a short file is refused with the same message.

    Args:
        filename: the file.
        ds: the dataset (its pixel data loaded or deferred).
        inflated: the dataset came from a deflated file (offsets refer to the inflated stream).

    Raises:
        ValueError: for missing or invalid group 0028 values and truncated pixel data.
    """
    from pydicom.pixels import as_pixel_options
    from pydicom.pixels.decoders.base import DecodeRunner

    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    runner = DecodeRunner(_syntax(ds))
    try:
        runner.set_options(**as_pixel_options(ds))
        runner.set_option("pixel_keyword", keyword)
        # the decoder's own checks of Bits Allocated/Stored, Photometric Interpretation, ...;
        # its public validate() also wants the pixel bytes, which this check leaves on disk
        runner._validate_options()
        expected = math.ceil(runner.frame_length(unit="bytes") * runner.number_of_frames)
    except (AttributeError, ValueError, TypeError) as e:
        raise ValueError(
            f"{filename}: cannot decode the pixel data of {_transfer_syntax(ds)}: {_one_line(e)}."
        ) from e
    elem = ds.get_item(keyword, keep_deferred=True)
    value = getattr(elem, "value", None)
    length = len(value) if value is not None else getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return
    held = length
    offset = getattr(elem, "value_tell", None)
    if value is None and not inflated and offset is not None:
        held = min(length, max(0, os.path.getsize(filename) - offset))
    padded = expected + expected % 2
    if held < padded and held != expected:
        bits = runner.bits_allocated
        raise ValueError(
            f"{filename}: truncated pixel data: expected {expected} bytes for {runner.rows}x{runner.columns}"
            f"x{runner.number_of_frames} frame(s) of {bits} bits ({runner.photometric_interpretation}), "
            f"the file holds {held}."
        )
    if (
        runner.photometric_interpretation == "YBR_FULL_422"
        and held >= expected // 2 * 3 + (expected // 2 * 3) % 2
    ):
        raise ValueError(
            f"{filename}: cannot decode the pixel data of {_transfer_syntax(ds)}: the pixel data is a third larger "
            f"than YBR_FULL_422 allows ({held} vs {expected} bytes): the Photometric Interpretation is likely RGB "
            f"or YBR_FULL."
        )


class DicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` with photometric handling and clear errors.

    On top of the parent (modality LUT: RescaleSlope/Intercept, affine from the patient
    position, series stacking by InstanceNumber), this reader:

    * refuses what :func:`dicom_image_problem` names (no pixels, SEG, multi-frame colour, ...);
    * maps palette colour through the file's lookup tables (pydicom's ``apply_color_lut``);
    * applies the VOI LUT or the window stored in the file to grey images when ``voi_lut`` is set;
    * inverts MONOCHROME1 images (after the VOI step) so that bright means dense for every file;
    * puts the frames of a multi-frame file last, (rows, columns, frames), like a series;
    * refuses a series folder that would not stack into one volume (mixed sizes or series,
      colour or multi-frame files, missing or repeated InstanceNumber, no slice direction),
      naming the folder;
    * turns reading and decoding failures into a one-line ``ValueError`` naming the file, the
      transfer syntax, each decoder's reason and the package that would add a decoder.

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
        """Reads a file or a series folder (see ``PydicomReader.read``) with clear errors.

        A series folder's files are those :func:`list_series_files` names (regular DICOM files only):
        MONAI's reader opens every entry of the folder, and a FIFO there would block it forever.

        Raises:
            ValueError: one line naming the file or folder: not a regular file, an empty series folder,
                a looping or dangling link in it, or a file pydicom cannot read.
        """
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        series: dict[int, list[str]] = {}
        for i, name in enumerate(names):
            problem = _not_regular(name)
            if problem:
                raise ValueError(f"{name}: {problem}")
            if Path(name).is_dir():
                try:
                    series[i] = list_series_files(name)
                except OSError as e:
                    raise ValueError(f"{name}: cannot list the series folder ({_one_line(e)}).") from e
                if not series[i]:
                    raise ValueError(f"{name}: the folder holds no DICOM files (expected one series).")
        try:
            return self._read_files(names, series, kwargs) if series else super().read(data, **kwargs)
        except Exception as e:  # pydicom raises InvalidDicomError, EOFError, OSError, ValueError, ...
            shown = names[0] if len(names) == 1 else data
            raise ValueError(f"{shown}: not a readable DICOM file ({_one_line(e)}).") from e

    def _read_files(
        self, names: list[Any], series: Mapping[int, list[str]], kwargs: Mapping[str, Any]
    ) -> Any:
        """``PydicomReader.read`` with the series folders' files given (what it leaves for ``get_data``:
        ``filenames`` and ``has_series``, set the same way)."""
        import pydicom

        options = {**self.kwargs, **kwargs}
        self.filenames = [str(n) for n in names]
        self.has_series = False
        images: list[Any] = []
        for i, name in enumerate(names):
            files = series.get(i)
            if files is None:
                images.append(pydicom.dcmread(fp=str(name), **options))
                continue
            slices = [pydicom.dcmread(fp=f, **options) for f in files]
            if len(slices) > 1:
                self.has_series = True
                images.append(slices)
                self.filenames[i] = files  # type: ignore[call-overload]
            else:
                images.append(slices[0])
                self.filenames[i] = files[0]
        return images[0] if len(names) == 1 else images

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
        folder = os.path.dirname(str(filenames[0])) if filenames else "?"
        problem = _series_problem([(ds, str(f)) for ds, f in zip(data, filenames, strict=True)])
        if problem:
            raise ValueError(f"{folder}: {problem}")
        return super()._combine_dicom_series(data, filenames)

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        problem = dicom_image_problem(img, filename)
        if problem:
            raise ValueError(f"{filename}: {problem}")
        _, _, frames, samples = _dicom_geometry(img, filename)
        family = _syntax_family(_syntax(img))
        if family in ("native", "deflated"):
            # the pre-flight's size rule, so that a short file gets the same message here
            _check_native_pixels(str(filename), img, inflated=family == "deflated")
        raw = _decode_dicom(img, filename)
        photometric = img.get("PhotometricInterpretation")
        if photometric == "PALETTE COLOR":
            samples = 3  # the palette gave RGB; no modality or VOI LUT applies to palette colour
            data = raw.astype(np.float32, copy=False)
        else:
            data = apply_modality_lut(raw, img).astype(np.float32, copy=False)
            if self.voi_lut and samples == 1 and ("VOILUTSequence" in img or "WindowCenter" in img):
                data = apply_voi_lut(data, img).astype(np.float32, copy=False)
            if self.invert_monochrome1 and photometric == "MONOCHROME1":
                data = data.max() + data.min() - data
        self._samples = max(getattr(self, "_samples", 1), samples)
        if frames > 1 and data.ndim == (3 if samples == 1 else 4):
            # (frames, rows, cols[, samples]) -> (rows, cols, frames[, samples]) like a stacked series
            data = np.moveaxis(data, 0, 2)
        return np.ascontiguousarray(data)


def _series_problem(slices: Sequence[tuple[Any, str]]) -> str | None:
    """Why datasets cannot be stacked into one volume, or ``None``.

    MONAI stacks the slices of a folder in InstanceNumber order, leaves out (with a warning) a
    slice without InstanceNumber, and takes the slice direction from the first and last
    ImagePositionPatient; so a folder must hold one series of single-frame grey slices of one
    size, each with its own InstanceNumber, not all at one position.
    """
    sizes: dict[tuple[int, int], list[str]] = {}
    series: dict[str, str] = {}
    numbers: list[tuple[Any, str]] = []
    total_bits = 0
    for ds, f in slices:
        name = os.path.basename(f)
        rows, cols, frames, samples = _dicom_geometry(ds, f)
        total_bits += rows * cols * frames * samples * _dicom_bits(ds)  # each slice passed on its own
        if frames > 1:
            return (
                f"a series of multi-frame files (e.g. {name}: {frames} frames); expected single-frame slices."
            )
        if samples > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            return f"a series of colour images (e.g. {name}: {ds.get('PhotometricInterpretation')}); expected grey slices."
        sizes.setdefault((rows, cols), []).append(name)
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), name)
        numbers.append((ds.get("InstanceNumber"), name))
    too_large = _bytes_problem(-(-total_bits // 8), f"{len(slices)} slices of pixels together")
    if too_large:
        return too_large
    if len(sizes) > 1:
        desc = ", ".join(f"{r}x{c} ({len(v)} files, e.g. {v[0]})" for (r, c), v in sorted(sizes.items()))
        return f"the series mixes slice sizes: {desc}; expected one size."
    if len(series) > 1:
        examples = ", ".join(list(series.values())[:3])
        return f"the folder mixes {len(series)} series (different SeriesInstanceUID, e.g. {examples}); expected one series."
    seen: dict[int, str] = {}
    for number, name in numbers:
        if number is None or number == "":
            return f"slice {name} has no InstanceNumber (the loader would leave it out); expected every slice numbered."
        try:
            n = int(number)
        except (TypeError, ValueError):
            return f"slice {name} has an invalid InstanceNumber {number!r}; expected an integer."
        if n in seen:
            return (
                f"slices {seen[n]} and {name} share InstanceNumber {n}: the slice order is ambiguous; "
                f"expected one number per slice."
            )
        seen[n] = name
    ordered = sorted((ds for ds, _ in slices), key=lambda d: int(d.InstanceNumber))
    first, last = ordered[0], ordered[-1]
    if all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in (first, last)):
        a = np.asarray(first.ImagePositionPatient, dtype=float)
        b = np.asarray(last.ImagePositionPatient, dtype=float)
        if a.shape == b.shape and np.allclose(a, b):
            return (
                f"the first and last slices lie at one position (ImagePositionPatient {a.tolist()}): no slice "
                f"direction; expected slices along an axis."
            )
    return None


# ---------------------------------------------------------------------------------------- NIfTI
def nifti_problem(img: Any) -> str | None:
    """Why a nibabel image is not a 2D/3D image this toolkit classifies, or ``None`` when it is one.

    The rules (the loader and the pre-flight both apply them): CIFTI-2 files (and NIfTI files
    with a connectivity intent) hold grayordinate or connectivity matrices, not an image grid;
    a 4D (or 5D...) image whose extra axes hold more than one value (a time series, vectors, a
    tensor) is not one volume, and averaging its time points is not a reading of it; voxels
    must be real numbers (not RGB24 or complex); the voxels the header declares, read as floats,
    must fit :func:`max_image_bytes`.

    Args:
        img: the image from ``nibabel.load``.

    Returns:
        The reason (one line, without the file name), or ``None``.
    """
    import nibabel as nib

    header = getattr(img, "nifti_header", None) or img.header
    intent = header.get_intent(code_repr="code")[0] if hasattr(header, "get_intent") else 0
    if isinstance(img, nib.cifti2.Cifti2Image) or 3000 <= int(intent) < 3100:
        name = header.get_intent()[0] if hasattr(header, "get_intent") else "?"
        return (
            f"a CIFTI-2 file (intent {name}, matrix {tuple(int(s) for s in img.shape)}): grayordinate/connectivity "
            f"data, not an image grid; expected a 2D or 3D NIfTI image."
        )
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and math.prod(shape[3:]) > 1:
        return (
            f"a {len(shape)}D NIfTI image (shape {shape}: {math.prod(shape[3:])} volumes of {shape[:3]}): expected one "
            f"2D or 3D image; save the volume to classify on its own (e.g. nibabel's img.slicer[..., t])."
        )
    dtype = np.dtype(img.get_data_dtype())
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating):
        return f"voxel type {dtype} (RGB or complex) is not supported; expected real-valued voxels."
    # the loader's array is float32 at least; bound what the header declares before a voxel is read
    return _size_problem(
        shape,
        8 * max(dtype.itemsize, 4),
        f"voxels of {dtype} (read as {max(dtype.itemsize, 4) * 8}-bit floats)",
    )


# a gzip-compressed NIfTI file at most this large is read and inflated in one go (see _read_nifti_gz)
_ONE_READ_MAX_FILE_BYTES = 64 * 2**20
# ... and only when its voxels take at most this much: the one-go read holds the inflated bytes beside
# the array for a moment, which a large volume should not pay for to save a millisecond
_ONE_READ_MAX_DATA_BYTES = 256 * 2**20
# a header, its extensions and padding before the voxels (vox_offset) larger than this: nibabel's path
_ONE_READ_MAX_OFFSET = 2**20


def _read_nifti_gz(path: str | os.PathLike) -> Any | None:
    """A small single-file NIfTI-1 ``.nii.gz`` read with one ``open`` and one inflate, or ``None``.

    ``nibabel.load`` opens a compressed file twice (once to sniff the format, once for the header)
    and ``dataobj`` a third time to inflate the voxels through Python's ``gzip`` module; for the
    small volumes of a classification data set that is most of the time to load one. Here the
    compressed bytes are read once and inflated with ``zlib``; nibabel parses the inflated bytes
    (``Nifti1Image.from_stream``), so header, affine, scaling and voxel values are nibabel's.

    Bounded as the rest of this module: the header and its extensions are inflated first
    (at most :data:`_ONE_READ_MAX_OFFSET` bytes) and checked by :func:`nifti_problem` (the
    declared size included) before the voxels are inflated, and no more bytes are inflated than
    the header declares.

    Args:
        path: the file.

    Returns:
        The image (its voxels in memory, read lazily by nibabel from there), or ``None`` when this
        path does not apply: not a regular ``.nii.gz`` file, a large file or volume, not NIfTI-1,
        a gzip stream that is cut short, corrupt or split in members, or any header nibabel would
        complain about. The caller then reads the file with ``nibabel.load``, which gives the
        verdict and message it always gave.

    Raises:
        ValueError: naming the file and what :func:`nifti_problem` found in its header.
    """
    import nibabel as nib

    if not str(path).lower().endswith(".nii.gz"):
        return None
    try:
        # O_NONBLOCK: a FIFO swapped in after the caller's check does not block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _ONE_READ_MAX_FILE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            compressed = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        head = inflate.decompress(compressed, 348)
        if len(head) < 348 or head[344:348] != b"n+1\0":
            return None  # NIfTI-2, CIFTI, a pair header, not NIfTI at all: nibabel.load sorts them out
        order = "<" if int.from_bytes(head[:4], "little") == 348 else ">"
        offset = int(np.frombuffer(head, dtype=f"{order}f4", count=1, offset=108)[0])
        if not 348 <= offset <= _ONE_READ_MAX_OFFSET:
            return None
        prefix = head + inflate.decompress(inflate.unconsumed_tail, offset - 348)
        if len(prefix) < offset:
            return None
        # header and extensions only, parsed once: nibabel reads voxels lazily from this stream,
        # so the voxels written to its end below are what the image's dataobj reads
        stream = io.BytesIO(prefix)
        img = nib.Nifti1Image.from_stream(stream)
    except Exception:  # zlib.error, nibabel's header errors: nibabel.load gives its own verdict
        return None
    problem = nifti_problem(img)
    if problem:
        raise ValueError(f"{path}: {problem}")
    nbytes = math.prod(int(d) for d in img.shape) * img.get_data_dtype().itemsize
    if nbytes > _ONE_READ_MAX_DATA_BYTES:
        return None
    try:
        voxels = inflate.decompress(inflate.unconsumed_tail, nbytes) if nbytes else b""
    except zlib.error:
        return None
    if len(voxels) < nbytes:
        return None  # cut short, or more than one gzip member: nibabel reads (or refuses) it
    # the stream now holds the file's inflated bytes up to the last voxel, at the header's offsets
    stream.seek(0, io.SEEK_END)
    stream.write(voxels)
    return img


class NiftiReader(NibabelReader):
    """MONAI's ``NibabelReader`` that refuses what :func:`nifti_problem` names.

    MONAI reads the axes after the third as channels, which the presets then average: a 4D time
    series would silently become its mean volume; CIFTI files fail deep inside the reader.
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Reads as ``NibabelReader.read``, each file's header checked before any voxel is read.

        Each file is opened by ``nibabel.load`` once: the image whose header :func:`nifti_problem`
        checks is the one returned (nibabel maps the voxels lazily, so nothing but the header has
        been read when the check refuses a file). Loading it a second time for the data, as
        ``NibabelReader.read`` would, parsed every header twice: a third of the time to load a
        small volume.

        Raises:
            ValueError: naming the file and what :func:`nifti_problem` found.
        """
        import nibabel as nib
        from monai.data.utils import correct_nifti_header_if_necessary

        filenames = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        # what NibabelReader.read leaves for get_data
        self.filenames = filenames
        options = {**self.kwargs, **kwargs}
        images = []
        for name in filenames:
            # nibabel's own options (mmap, keep_file_open) apply to its file reading only
            img = None if options else _read_nifti_gz(name)
            if img is None:
                img = nib.load(name, **options)
                problem = nifti_problem(img)
                if problem:
                    raise ValueError(f"{name}: {problem}")
            images.append(correct_nifti_header_if_necessary(img))
        return images if len(filenames) > 1 else images[0]


def _pil_size_problem(image: Any) -> str | None:
    """Why a Pillow image (header read, pixels not yet) declares too many bytes, or ``None``."""
    width, height = (int(v) for v in image.size)
    mode = str(image.mode)
    bands = len(image.getbands())
    bits = _PIL_BITS.get(mode, 8)
    return _size_problem(
        (width, height, bands), bits, f"(width x height x bands) pixels of {bits} bits ({mode})"
    )


def _pil_convert(image: Any) -> Any:
    """Palette, CMYK and YCbCr pictures as RGB and grey+alpha as grey (bands that are colour samples)."""
    mode = _PIL_CONVERT.get(image.mode)
    return image.convert(mode) if mode else image


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
            "nifti": NiftiReader(),
            "numpy": NumpyReader(),
            "pil": PILReader(converter=_pil_convert),
        }

    def _backend(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> ImageReader:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        kinds = set()
        for name in names:
            if not Path(name).exists():
                raise FileNotFoundError(f"image not found: {name}")
            problem = _not_regular(name)
            if problem:
                raise ValueError(f"{name}: {problem}")
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
        """Reads with the backend for the path; returns ``(backend, image object, paths)``.

        Raises:
            FileNotFoundError: for a missing path.
            ValueError: one line naming the file, for an unsupported format or a file the
                backend cannot read.
        """
        backend = self._backend(data)
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        shown = str(names[0]) if len(names) == 1 else str([str(n) for n in names])
        try:
            obj = backend.read(data, **kwargs)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as e:  # nibabel, PIL and NumPy raise their own types for broken files
            raise ValueError(
                f"{shown}: not a readable image file ({type(e).__name__}: {_one_line(e)})."
            ) from e
        if backend is self._readers["pil"]:
            # Pillow has read the header only: bound the page before get_data decodes it
            for name, image in zip(names, obj if isinstance(obj, list) else [obj], strict=False):
                problem = _pil_size_problem(image)
                if problem:
                    raise ValueError(f"{name}: {problem}")
        return backend, obj, shown

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array and metadata from what :meth:`read` returned.

        Raises:
            ValueError: one line naming the file, for pixels that cannot be read (a truncated
                PNG, a refused DICOM or NIfTI file, ...).
        """
        backend, obj, shown = img
        try:
            return backend.get_data(obj)
        except ValueError:
            raise
        except Exception as e:  # e.g. OSError from PIL for a truncated picture
            raise ValueError(f"{shown}: cannot read the pixels ({type(e).__name__}: {_one_line(e)}).") from e


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
    """What the pre-flight check needs to know about an image, in the loader's terms.

    Attributes:
        kind: the reader family (see :func:`image_kind`).
        shape: the spatial shape the loader gives (channels, samples, NIfTI's singleton fourth
            axis excluded), x first.
        channels: samples per pixel / colour channels (1 for grey; 3 for palette colour).
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
        """The spatial dimensions the image is used with: trailing one-pixel axes beyond two dropped.

        A (W, H, 1) NIfTI is 2D, as the presets read it; a model of :attr:`ndim` dimensions
        loads the image, any other refuses it (:meth:`dims_problem`).
        """
        shape = list(self.shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape.pop()
        return len(shape)

    def dims_problem(self, expected_dims: int) -> str | None:
        """Why the image does not fit a model of ``expected_dims`` spatial dimensions, or ``None``."""
        if self.ndim != expected_dims:
            return (
                f"wrong dimensionality: expected a {expected_dims}D image but got a {self.ndim}D one "
                f"(shape {tuple(self.shape)})"
            )
        return None


def read_header(path: str | os.PathLike, decode: bool = False) -> ImageHeader:
    """The verdict on one input: its header when the loader will read it, else a one-line error.

    This is the check every command runs on its inputs (the pre-flight of ``train`` and
    ``validate-data``, ``predict``), so they all refuse the same files for the same reasons. It
    applies the loader's rules (:func:`dicom_image_problem`, :func:`nifti_problem`, series
    checks) and reads only what the truth needs: DICOM headers with pydicom's size rule for
    uncompressed and deflated pixel data, a full decode for compressed (encapsulated) pixel data;
    NIfTI and ``.npy`` headers; PNG/JPEG/TIFF/BMP pixels (Pillow decodes them as the loader
    will). Pixels are also decoded when ``decode`` is set, and always for floating-point data
    that can hold NaN/inf cheaply (NIfTI and ``.npy`` float arrays), so the check can report them.

    Args:
        path: an image file or a DICOM series folder.
        decode: decode every file's pixels (also finds NaN/inf in DICOM float pixel data and
            integer NIfTI data that does not read).

    Returns:
        The :class:`ImageHeader`.

    Raises:
        FileNotFoundError: when the path does not exist.
        ValueError: for an unreadable, truncated, undecodable or pixel-less file, a SEG, CIFTI,
            4D NIfTI or multi-frame colour file, a series that cannot form one volume, a
            degenerate (one-pixel) axis, NaN/inf in decoded pixels, or an unsupported format;
            one line naming the file and what is wrong.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    problem = _not_regular(p)
    if problem:
        raise ValueError(f"{p}: {problem}")
    kind = image_kind(p)
    try:
        if kind in ("dicom", "dicom_series"):
            header = _dicom_header(p, kind, decode)
        elif kind == "nifti":
            header = _nifti_header(p, decode)
        elif kind == "numpy":
            header = _numpy_header(p)
        else:
            header = _pil_header(p)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # a library's own error on a file it cannot handle: still one line per item
        raise ValueError(f"{p}: cannot read the image ({type(e).__name__}: {_one_line(e)}).") from e
    shape = list(header.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    if len(shape) < 2 or min(shape) < 2:
        # a one-pixel axis inside the image: a line or a point, or axes in an unexpected order
        raise ValueError(
            f"{p}: degenerate image shape {tuple(header.shape)}: every axis needs 2 pixels or more."
        )
    if header.finite is False:
        # it would load, but one NaN makes every loss and gradient NaN
        raise ValueError(f"{p}: NaN or inf pixel values.")
    return header


def _numpy_header(p: Path) -> ImageHeader:
    # NumPy's reader gives the array as stored: every axis is spatial (no channel axis)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{p}: not a readable .npy file ({type(e).__name__}: {_one_line(e)}).") from e
    shape = tuple(int(s) for s in arr.shape)
    finite = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.floating) else True
    return ImageHeader("numpy", shape, 1, True, finite)


def _nifti_header(p: Path, decode: bool) -> ImageHeader:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        problem = nifti_problem(img)
    except Exception as e:
        raise ValueError(f"{p}: not a readable NIfTI file ({type(e).__name__}: {_one_line(e)}).") from e
    if problem:
        raise ValueError(f"{p}: {problem}")
    # MONAI reads the first three axes as space and the rest as channels (one, by nifti_problem)
    shape = tuple(int(s) for s in img.shape[:3])
    finite = None
    is_float = np.issubdtype(img.get_data_dtype(), np.floating)
    if decode or is_float:
        try:
            arr = np.asanyarray(img.dataobj)
        except Exception as e:  # truncated data, bad scaling
            raise ValueError(f"{p}: not a readable NIfTI file ({type(e).__name__}: {_one_line(e)}).") from e
        finite = bool(np.isfinite(arr).all())
    return ImageHeader("nifti", shape, 1, decode or is_float, finite)


def _pil_header(p: Path) -> ImageHeader:
    # PNG and JPEG are compressed: as for compressed DICOM, only decoding tells whether the data
    # is complete (Pillow reads a PNG without its last chunk but not a JPEG cut a few bytes
    # short), so the pixels are decoded, as the loader will
    from PIL import Image

    try:
        im = Image.open(p)
    except Exception as e:
        raise ValueError(f"{p}: not a readable image file ({type(e).__name__}: {_one_line(e)}).") from e
    with im:
        problem = _pil_size_problem(im)  # from the header, before a pixel is decoded
        if problem:
            raise ValueError(f"{p}: {problem}")
        try:
            size = im.size
            bands = Image.getmodebands(_PIL_CONVERT.get(im.mode, im.mode))
            im.load()
        except Exception as e:
            raise ValueError(f"{p}: not a readable image file ({type(e).__name__}: {_one_line(e)}).") from e
    return ImageHeader("pil", (int(size[0]), int(size[1])), bands, True, True)


def _dicom_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    import pydicom

    files = [str(p)] if kind == "dicom" else list_series_files(p)
    if not files:
        raise ValueError(f"{p}: the folder holds no DICOM files (expected one series).")
    slices: list[tuple[Any, str, str]] = []
    for f in files:
        try:
            # large values (the pixels) stay on disk, their position and length known
            ds = pydicom.dcmread(f, defer_size=1024)
            family = _syntax_family(_syntax(ds))
            if family == "deflated":
                # pydicom inflates the whole file in memory: deferred offsets point into the
                # inflated stream, not the file, so read the values themselves
                ds = pydicom.dcmread(f)
        except Exception as e:
            raise ValueError(f"{f}: not a readable DICOM file ({type(e).__name__}: {_one_line(e)}).") from e
        problem = dicom_image_problem(ds, f)
        if problem:
            raise ValueError(f"{f}: {problem}")
        slices.append((ds, f, family))
    if kind == "dicom_series" and len(slices) > 1:
        problem = _series_problem([(ds, f) for ds, f, _ in slices])
        if problem:
            raise ValueError(f"{p}: {problem}")
    finite = None
    reader = DicomReader()
    for ds, f, family in slices:
        if decode or family in ("encapsulated", "unknown"):
            # only a decoder can tell whether it reads a compressed stream: decode as training will,
            # from a fresh read, so the header kept for the series check does not hold the pixels
            try:
                full = ds if family == "deflated" else pydicom.dcmread(f)
            except Exception as e:  # e.g. the encapsulated pixel data ends early
                raise ValueError(
                    f"{f}: not a readable DICOM file ({type(e).__name__}: {_one_line(e)})."
                ) from e
            arr = reader._get_array_data(full, f)
            ok = bool(np.isfinite(arr).all())
            finite = ok if finite is None else (finite and ok)
            del full, arr
        else:
            _check_native_pixels(f, ds, inflated=family == "deflated")
    rows, cols, frames, samples = _dicom_geometry(slices[0][0], slices[0][1])
    if kind == "dicom_series" and len(slices) > 1:
        return ImageHeader(kind, (cols, rows, len(slices)), 1, finite is not None, finite)
    channels = 3 if slices[0][0].get("PhotometricInterpretation") == "PALETTE COLOR" else samples
    shape = (cols, rows, frames) if frames > 1 else (cols, rows)
    return ImageHeader(kind, shape, channels, finite is not None, finite)
