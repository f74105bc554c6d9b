"""DICOM: a file (``.dcm``/``.dicom``/``.ima`` or the ``DICM`` preamble) or a folder holding one series.

:class:`DicomReader` is MONAI's ``PydicomReader`` plus MONOCHROME1 inversion, palette colour through the
file's lookup tables, optional VOI LUT / window, frame order for multi-frame files, a mixed-size series
check and errors that name the file, the transfer syntax, the decoders' reasons and the package that
would add a decoder. :func:`dicom_header` is the pre-flight's check with the same rules
(:func:`dicom_image_problem`, the series rules): pydicom's size rule from the header for native and
deflated transfer syntaxes, a full decode for compressed (encapsulated) ones, since only a decoder
can tell whether it reads a stream.
"""

from __future__ import annotations

import errno
import importlib.metadata
import math
import os
import re
import stat
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PydicomReader

from lilaw_med.data.readers.common import (
    ImageHeader,
    _bytes_problem,
    _not_regular,
    _one_line,
    _size_problem,
)

__all__ = [
    "DICOM_SUFFIXES",
    "DicomReader",
    "dicom_header",
    "dicom_image_problem",
    "is_dicom_file",
    "list_series_files",
]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# pydicom names a decoder plugin's requirements by import name; pip needs the distribution name
_DISTRIBUTION = {"gdcm": "python-gdcm"}

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
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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
        # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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
        # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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


def dicom_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    """The pre-flight's verdict on a DICOM file or series folder (see :func:`~lilaw_med.data.readers.read_header`).

    Args:
        p: the file or folder.
        kind: ``"dicom"`` (a file) or ``"dicom_series"`` (a folder).
        decode: decode every file's pixels (native ones too).

    Returns:
        The header.

    Raises:
        ValueError: one line naming the file and what is wrong.
    """
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
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

