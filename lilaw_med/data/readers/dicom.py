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
import math
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PydicomReader

from lilaw_med.data.readers.common import ImageHeader, _not_regular, _size_problem
from lilaw_med.data.readers.dicom_meta import (
    _decode_error,
    _dicom_bits,
    _dicom_geometry,
    _sop_class,
    _syntax,
    _syntax_family,
    _transfer_syntax,
)
from lilaw_med.data.readers.dicom_series import _series_problem
from lilaw_med.errors import InputError, one_line

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
        InputError: for a symbolic link in the folder that loops or points nowhere (one line naming it:
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
                    raise InputError(
                        f"{entry.path}: a symbolic link that {how} ({e.strerror}) in the series folder; expected "
                        f"the series' DICOM files."
                    ) from None
                continue  # removed while listing
            if stat.S_ISREG(mode) and is_dicom_file(entry.path):
                files.append(entry.path)
    return sorted(files)


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
        InputError: when Rows/Columns/NumberOfFrames/SamplesPerPixel are not integers.
    """
    for rule in _IMAGE_RULES:
        problem = rule(ds, filename)
        if problem:
            return problem
    return None


def _where(ds: Any) -> str:
    return f"Modality {ds.get('Modality', '?')}, SOP class {_sop_class(ds)}"


def _no_image(ds: Any, filename: str | os.PathLike) -> str | None:
    """No data elements, no pixel data, or pixel data without Rows/Columns."""
    if len(ds) == 0:
        # pydicom returns an empty dataset when the file ends inside an element (it only warns)
        return "not a readable DICOM file: no data elements after the file meta (cut short?)."
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return f"no image: the file holds no pixel data ({_where(ds)}); expected an image."
    if "Rows" not in ds or "Columns" not in ds:
        return f"no image: pixel data without Rows/Columns ({_where(ds)}); expected an image."
    return None


def _too_large(ds: Any, filename: str | os.PathLike) -> str | None:
    bits = _dicom_bits(ds)
    return _size_problem(
        _dicom_geometry(ds, filename), bits, f"(Rows x Columns x frames x samples) pixels of {bits} bits"
    )


def _segmentation(ds: Any, filename: str | os.PathLike) -> str | None:
    is_seg = (
        ds.get("Modality") == "SEG"
        or str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE
        or "SegmentSequence" in ds
    )
    if not is_seg:
        return None
    frames = _dicom_geometry(ds, filename)[2]
    return (
        f"a DICOM segmentation (SEG, {ds.get('BitsAllocated', '?')}-bit {ds.get('SegmentationType', '?')}, "
        f"{frames} frame(s)): a label map, not an image to classify; list the image it segments instead."
    )


def _colour(ds: Any, filename: str | os.PathLike) -> str | None:
    """Multi-frame colour, or palette colour without its lookup tables."""
    _, _, frames, samples = _dicom_geometry(ds, filename)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if (samples > 1 or photometric == "PALETTE COLOR") and frames > 1:
        return (
            f"a multi-frame colour file ({frames} frames of {photometric or 'colour'}, {_where(ds)}; e.g. a cine): "
            f"colour frames are not a volume; expected one colour picture or a grey volume (save one frame per file)."
        )
    if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in ds:
        return "PALETTE COLOR without its palette (no Red/Green/Blue Palette Color Lookup Table); expected the tables."
    return None


# in this order: the size rule needs Rows/Columns, and a too-large file is named as such first
_IMAGE_RULES: tuple[Callable[[Any, str | os.PathLike], str | None], ...] = (
    _no_image,
    _too_large,
    _segmentation,
    _colour,
)


def _decode_dicom(ds: Any, filename: str | os.PathLike) -> np.ndarray:
    """Decodes the pixel data as stored (frames first, samples last), palette colour through its LUT.

    Raises:
        InputError: one line naming the file, the transfer syntax, the decoders' reasons and
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
        InputError: for missing or invalid group 0028 values and truncated pixel data.
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
        raise InputError(
            f"{filename}: cannot decode the pixel data of {_transfer_syntax(ds)}: {one_line(e)}."
        ) from e
    held = _held_bytes(filename, ds.get_item(keyword, keep_deferred=True), inflated)
    if held is not None:
        _check_pixel_length(filename, ds, runner, expected, held)


def _held_bytes(filename: str, elem: Any, inflated: bool) -> int | None:
    """The bytes the pixel data element holds (a deferred value: at most what the file still holds);
    ``None`` for an undefined length."""
    value = getattr(elem, "value", None)
    length = len(value) if value is not None else getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return None
    offset = getattr(elem, "value_tell", None)
    if value is None and not inflated and offset is not None:
        return min(length, max(0, os.path.getsize(filename) - offset))
    return length


def _check_pixel_length(filename: str, ds: Any, runner: Any, expected: int, held: int) -> None:
    """Truncated pixel data, or YBR_FULL_422 data a third too long (likely RGB or YBR_FULL)."""
    padded = expected + expected % 2
    if held < padded and held != expected:
        bits = runner.bits_allocated
        raise InputError(
            f"{filename}: truncated pixel data: expected {expected} bytes for {runner.rows}x{runner.columns}"
            f"x{runner.number_of_frames} frame(s) of {bits} bits ({runner.photometric_interpretation}), "
            f"the file holds {held}."
        )
    if (
        runner.photometric_interpretation == "YBR_FULL_422"
        and held >= expected // 2 * 3 + (expected // 2 * 3) % 2
    ):
        raise InputError(
            f"{filename}: cannot decode the pixel data of {_transfer_syntax(ds)}: the pixel data is a third larger "
            f"than YBR_FULL_422 allows ({held} vs {expected} bytes): the Photometric Interpretation is likely RGB "
            f"or YBR_FULL."
        )


def _checked_input(name: str | os.PathLike) -> list[str] | None:
    """A series folder's DICOM files; ``None`` for a regular file; raises for anything else."""
    problem = _not_regular(name)
    if problem:
        raise InputError(f"{name}: {problem}")
    if not Path(name).is_dir():
        return None
    try:
        files = list_series_files(name)
    except OSError as e:
        raise InputError(f"{name}: cannot list the series folder ({one_line(e)}).") from e
    if not files:
        raise InputError(f"{name}: the folder holds no DICOM files (expected one series).")
    return files


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
            InputError: one line naming the file or folder: not a regular file, an empty series folder,
                a looping or dangling link in it, or a file pydicom cannot read.
        """
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        series = {i: files for i, name in enumerate(names) if (files := _checked_input(name)) is not None}
        try:
            return self._read_files(names, series, kwargs) if series else super().read(data, **kwargs)
        except Exception as e:  # pydicom raises InvalidDicomError, EOFError, OSError, ValueError, ...
            shown = names[0] if len(names) == 1 else data
            raise InputError(f"{shown}: not a readable DICOM file ({one_line(e)}).") from e

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
            raise InputError(f"{folder}: {problem}")
        return super()._combine_dicom_series(data, filenames)

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        problem = dicom_image_problem(img, filename)
        if problem:
            raise InputError(f"{filename}: {problem}")
        _, _, frames, samples = _dicom_geometry(img, filename)
        family = _syntax_family(_syntax(img))
        if family in ("native", "deflated"):
            # the pre-flight's size rule, so that a short file gets the same message here
            _check_native_pixels(str(filename), img, inflated=family == "deflated")
        raw = _decode_dicom(img, filename)
        if img.get("PhotometricInterpretation") == "PALETTE COLOR":
            samples = 3  # the palette gave RGB; no modality or VOI LUT applies to palette colour
            data = raw.astype(np.float32, copy=False)
        else:
            data = self._grey_values(raw, img, samples)
        self._samples = max(getattr(self, "_samples", 1), samples)
        if frames > 1 and data.ndim == (3 if samples == 1 else 4):
            # (frames, rows, cols[, samples]) -> (rows, cols, frames[, samples]) like a stacked series
            data = np.moveaxis(data, 0, 2)
        return np.ascontiguousarray(data)

    def _grey_values(self, raw: np.ndarray, img: Any, samples: int) -> np.ndarray:
        """Stored values through the modality LUT, the VOI LUT or window (when asked for) and the
        MONOCHROME1 inversion."""
        # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        data = apply_modality_lut(raw, img).astype(np.float32, copy=False)
        if self.voi_lut and samples == 1 and ("VOILUTSequence" in img or "WindowCenter" in img):
            data = apply_voi_lut(data, img).astype(np.float32, copy=False)
        if self.invert_monochrome1 and img.get("PhotometricInterpretation") == "MONOCHROME1":
            data = data.max() + data.min() - data
        return data


def dicom_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    """The pre-flight's verdict on a DICOM file or series folder (see :func:`~lilaw_med.data.readers.read_header`).

    Args:
        p: the file or folder.
        kind: ``"dicom"`` (a file) or ``"dicom_series"`` (a folder).
        decode: decode every file's pixels (native ones too).

    Returns:
        The header.

    Raises:
        InputError: one line naming the file and what is wrong.
    """
    files = [str(p)] if kind == "dicom" else list_series_files(p)
    if not files:
        raise InputError(f"{p}: the folder holds no DICOM files (expected one series).")
    slices = [_header_slice(f) for f in files]
    series = kind == "dicom_series" and len(slices) > 1
    if series:
        problem = _series_problem([(ds, f) for ds, f, _ in slices])
        if problem:
            raise InputError(f"{p}: {problem}")
    return _header(kind, slices, series, _check_pixels(slices, decode))


def _header(kind: str, slices: Sequence[tuple[Any, str, str]], series: bool, finite: bool | None) -> ImageHeader:
    """The shape the loader gives (x first): a series stacks its slices last, frames come last."""
    first, first_file, _ = slices[0]
    rows, cols, frames, samples = _dicom_geometry(first, first_file)
    if series:
        return ImageHeader(kind, (cols, rows, len(slices)), 1, finite is not None, finite)
    channels = 3 if first.get("PhotometricInterpretation") == "PALETTE COLOR" else samples
    shape = (cols, rows, frames) if frames > 1 else (cols, rows)
    return ImageHeader(kind, shape, channels, finite is not None, finite)


def _read_dataset(f: str, defer_size: int | None = None) -> Any:
    """``pydicom.dcmread`` with a one-line error naming the file."""
    # pydicom (about 0.3 s) loads with the first DICOM file: runs of other formats never import it
    import pydicom

    try:
        return pydicom.dcmread(f, defer_size=defer_size)
    except Exception as e:  # e.g. the encapsulated pixel data ends early
        raise InputError(f"{f}: not a readable DICOM file ({one_line(e, with_type=True)}).") from e


def _header_slice(f: str) -> tuple[Any, str, str]:
    """``(dataset, file, syntax family)`` of a file whose header passes :func:`dicom_image_problem`; the
    pixel data stays on disk unless the file is deflated."""
    # large values (the pixels) stay on disk, their position and length known
    ds = _read_dataset(f, defer_size=1024)
    family = _syntax_family(_syntax(ds))
    if family == "deflated":
        # pydicom inflates the whole file in memory: deferred offsets point into the
        # inflated stream, not the file, so read the values themselves
        ds = _read_dataset(f)
    problem = dicom_image_problem(ds, f)
    if problem:
        raise InputError(f"{f}: {problem}")
    return ds, f, family


def _check_pixels(slices: Sequence[tuple[Any, str, str]], decode: bool) -> bool | None:
    """Decodes what only a decoder can judge (or everything with ``decode``), size-checks the rest;
    whether every decoded pixel is finite (``None`` when nothing was decoded)."""
    finite = None
    reader = DicomReader()
    for ds, f, family in slices:
        if decode or family in ("encapsulated", "unknown"):
            # only a decoder can tell whether it reads a compressed stream: decode as training will,
            # from a fresh read, so the header kept for the series check does not hold the pixels
            full = ds if family == "deflated" else _read_dataset(f)
            ok = bool(np.isfinite(reader._get_array_data(full, f)).all())
            finite = ok if finite is None else (finite and ok)
            del full
        else:
            _check_native_pixels(f, ds, inflated=family == "deflated")
    return finite
