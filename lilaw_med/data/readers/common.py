"""What every format module shares: the size bound, the regular-file rule, one-line errors, the header.

**Bounded resources.** Before any pixel is allocated, the size a header declares is checked against
:func:`max_image_bytes` (4 GiB, or ``$LILAW_MED_MAX_IMAGE_BYTES``); only regular files are ever opened
(a FIFO given as an input blocks an ``open`` until a writer comes).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lilaw_med.errors import InputError, one_line

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "MAX_IMAGE_BYTES_ENV",
    "ImageHeader",
    "decoder_environment",
    "max_image_bytes",
]

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
        InputError: when the variable is set but not a positive integer.
    """
    value = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{MAX_IMAGE_BYTES_ENV} must be a positive number of bytes but is {value!r}.")
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
    return _mode_problem(mode)


def _mode_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` must not be opened (a FIFO, socket or device), or ``None``."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = (
        "a FIFO" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )  # fmt: skip
    return f"{kind}, not an image file; it was not opened (reading one can block forever)."


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



@contextlib.contextmanager
def _one_line_errors(
    shown: str | os.PathLike, what: str, keep: tuple[type[Exception], ...] = (InputError, FileNotFoundError)
) -> Iterator[None]:
    """Turns a library's own exception into ``InputError("{shown}: {what} (Type: message).")``.

    The types in ``keep`` pass unchanged: the readers raise them with the file named.
    nibabel, Pillow, NumPy and pydicom raise their own types for broken files; the caller gets one line.

    Args:
        shown: the path (or paths) for the message.
        what: what could not be done (``"not a readable image file"``).
        keep: the exception types that pass unchanged.

    Raises:
        InputError: for any other exception raised in the block.
    """
    try:
        yield
    except keep:
        raise
    except Exception as e:
        raise InputError(f"{shown}: {what} ({one_line(e, with_type=True)}).") from e
