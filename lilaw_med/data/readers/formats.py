"""The table of image formats: for each reader family, how a path is recognised, the MONAI
``ImageReader`` that loads it and the header check the pre-flight runs on it.

:class:`~lilaw_med.data.readers.loader.MedicalImageReader` (loading) and :func:`read_header` (the
pre-flight, ``validate-data`` and ``predict``) both dispatch through :data:`FORMATS` after the same
:func:`checked_kind`, so a file refused by one is refused by the other. A new format is one
:class:`ImageFormat` entry here and a module beside this one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.data import ImageReader, NumpyReader

from lilaw_med.data.readers.common import ImageHeader, _mode_problem, _one_line_errors
from lilaw_med.data.readers.dicom import DicomReader, dicom_header, is_dicom_file
from lilaw_med.data.readers.nifti import NIFTI_SUFFIXES, NiftiReader, nifti_header
from lilaw_med.data.readers.npy import NUMPY_SUFFIXES, numpy_header
from lilaw_med.data.readers.raster import PIL_SUFFIXES, _pil_size_problem, pil_header, pil_reader
from lilaw_med.errors import InputError

__all__ = ["FORMATS", "ImageFormat", "checked_kind", "family", "image_kind", "read_header"]


@dataclass(frozen=True)
class ImageFormat:
    """One reader family.

    Attributes:
        matches: whether a path (not a folder) is of this format; the table is tried in order.
        reader: builds the MONAI reader, given the DICOM options ``voi_lut`` and ``invert_monochrome1``
            (formats without such options ignore them).
        header: the pre-flight's check, ``(path, kind, decode) -> ImageHeader``; raises ``ValueError``
            naming the file.
        after_read: an optional check of what the reader's ``read`` returned, before ``get_data``
            decodes the pixels: ``(path, image object) -> reason or None``.
    """

    matches: Callable[[Path], bool]
    reader: Callable[..., ImageReader]
    header: Callable[[Path, str, bool], ImageHeader]
    after_read: Callable[[Any], str | None] | None = None


def _suffix(*suffixes: str) -> Callable[[Path], bool]:
    return lambda p: p.name.lower().endswith(suffixes)


FORMATS: dict[str, ImageFormat] = {
    "nifti": ImageFormat(_suffix(*NIFTI_SUFFIXES), lambda **_: NiftiReader(), nifti_header),
    "numpy": ImageFormat(_suffix(*NUMPY_SUFFIXES), lambda **_: NumpyReader(), numpy_header),
    # Pillow has read the header only after ``read``: the page is bounded before get_data decodes it
    "pil": ImageFormat(_suffix(*PIL_SUFFIXES), lambda **_: pil_reader(), pil_header, _pil_size_problem),
    # last: a file without a known suffix is DICOM when it holds the DICM preamble
    "dicom": ImageFormat(
        is_dicom_file,
        lambda voi_lut=False, invert_monochrome1=True: DicomReader(
            voi_lut=voi_lut, invert_monochrome1=invert_monochrome1
        ),
        dicom_header,
    ),
}
"""Reader family -> :class:`ImageFormat`, in the order paths are matched (a folder is a DICOM series)."""


def family(kind: str) -> str:
    """The :data:`FORMATS` key of a kind from :func:`image_kind` (a series folder is read as DICOM)."""
    return "dicom" if kind == "dicom_series" else kind


def image_kind(path: str | os.PathLike) -> str:
    """The reader family for a path: ``"dicom_series"``, ``"dicom"``, ``"nifti"``, ``"numpy"`` or ``"pil"``.

    Raises:
        InputError: when the format is not recognised (the message lists the supported ones).
    """
    p = Path(path)
    return "dicom_series" if p.is_dir() else _file_kind(p)


def _file_kind(p: Path) -> str:
    """:func:`image_kind` of a path that is not a folder."""
    for kind, fmt in FORMATS.items():
        if fmt.matches(p):
            return kind
    raise InputError(
        f"{p}: unsupported image format; expected DICOM (file or series folder), NIfTI (.nii/.nii.gz), "
        f".npy, or PNG/JPEG/TIFF/BMP."
    )


# what Path.exists() takes for "not there" (any other error of stat is not a missing file)
_MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def checked_kind(path: str | os.PathLike) -> str:
    """:func:`image_kind` of a path that exists and is a regular file or a folder, from one ``stat``.

    Raises:
        FileNotFoundError: when the path does not exist.
        InputError: for a FIFO, socket or device (never opened), or an unsupported format.
    """
    p = Path(path)
    try:
        mode: int | None = os.stat(p).st_mode
    except OSError as e:
        if e.errno in _MISSING_ERRNOS:
            raise FileNotFoundError(f"image not found: {path}") from None
        mode = None  # e.g. no permission: the reader's open says so
    if mode is not None:
        if stat.S_ISDIR(mode):
            return "dicom_series"
        problem = _mode_problem(mode)
        if problem:
            raise InputError(f"{path}: {problem}")
    return _file_kind(p)


def read_header(path: str | os.PathLike, decode: bool = False) -> ImageHeader:
    """The verdict on one input: its header when the loader will read it, else a one-line error.

    This is the check every command runs on its inputs (the pre-flight of ``train`` and
    ``validate-data``, ``predict``), so they all refuse the same files for the same reasons. It
    applies the loader's rules (:func:`~lilaw_med.data.readers.dicom.dicom_image_problem`,
    :func:`~lilaw_med.data.readers.nifti.nifti_problem`, series checks) and reads only what the truth
    needs: DICOM headers with pydicom's size rule for uncompressed and deflated pixel data, a full
    decode for compressed (encapsulated) pixel data; NIfTI and ``.npy`` headers; PNG/JPEG/TIFF/BMP
    pixels (Pillow decodes them as the loader will). Pixels are also decoded when ``decode`` is set,
    and always for floating-point data that can hold NaN/inf cheaply (NIfTI and ``.npy`` float
    arrays), so the check can report them.

    Example::

        header = read_header("scans/chest.dcm")
        assert header.dims_problem(2) is None

    Args:
        path: an image file or a DICOM series folder.
        decode: decode every file's pixels (also finds NaN/inf in DICOM float pixel data and
            integer NIfTI data that does not read).

    Returns:
        The :class:`~lilaw_med.data.readers.common.ImageHeader`.

    Raises:
        FileNotFoundError: when the path does not exist.
        InputError: for an unreadable, truncated, undecodable or pixel-less file, a SEG, CIFTI,
            4D NIfTI or multi-frame colour file, a series that cannot form one volume, a
            degenerate (one-pixel) axis, NaN/inf in decoded pixels, or an unsupported format;
            one line naming the file and what is wrong.
    """
    p = Path(path)
    kind = checked_kind(p)
    # a library's own error on a file it cannot handle: still one line per item
    with _one_line_errors(p, "cannot read the image"):
        header = FORMATS[family(kind)].header(p, kind, decode)
    shape = list(header.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    if len(shape) < 2 or min(shape) < 2:
        # a one-pixel axis inside the image: a line or a point, or axes in an unexpected order
        raise InputError(
            f"{p}: degenerate image shape {tuple(header.shape)}: every axis needs 2 pixels or more."
        )
    if header.finite is False:
        # it would load, but one NaN makes every loss and gradient NaN
        raise InputError(f"{p}: NaN or inf pixel values.")
    return header
