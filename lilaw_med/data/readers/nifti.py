"""NIfTI ``.nii`` / ``.nii.gz``: :class:`NiftiReader`, MONAI's ``NibabelReader`` that refuses 4D, CIFTI and
non-real voxel data (:func:`nifti_problem`) instead of passing them on as channels; each file is opened
once, a small ``.nii.gz`` read and inflated in one go (:func:`_read_nifti_gz`).
"""

from __future__ import annotations

import io
import math
import os
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader

from lilaw_med.data.readers.common import ImageHeader, _size_problem
from lilaw_med.errors import InputError, one_line

__all__ = ["NIFTI_SUFFIXES", "NiftiReader", "nifti_header", "nifti_problem"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

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
    cifti = _cifti_problem(img)
    if cifti:
        return cifti
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


def _cifti_problem(img: Any) -> str | None:
    """A CIFTI-2 file, or a NIfTI file with a connectivity intent (3000-3099)."""
    # nibabel loads with the first NIfTI file: runs of other formats never import it
    import nibabel as nib

    header = getattr(img, "nifti_header", None) or img.header
    has_intent = hasattr(header, "get_intent")
    intent = header.get_intent(code_repr="code")[0] if has_intent else 0
    if not (isinstance(img, nib.cifti2.Cifti2Image) or 3000 <= int(intent) < 3100):
        return None
    name = header.get_intent()[0] if has_intent else "?"
    return (
        f"a CIFTI-2 file (intent {name}, matrix {tuple(int(s) for s in img.shape)}): grayordinate/connectivity "
        f"data, not an image grid; expected a 2D or 3D NIfTI image."
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
        InputError: naming the file and what :func:`nifti_problem` found in its header.
    """
    if not str(path).lower().endswith(".nii.gz"):
        return None
    compressed = _small_file_bytes(path)
    if compressed is None:
        return None
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    parsed = _parse_header(inflate, compressed)
    if parsed is None:
        return None
    img, stream = parsed
    problem = nifti_problem(img)
    if problem:
        raise InputError(f"{path}: {problem}")
    voxels = _inflate_voxels(inflate, math.prod(int(d) for d in img.shape) * img.get_data_dtype().itemsize)
    if voxels is None:
        return None
    # the stream now holds the file's inflated bytes up to the last voxel, at the header's offsets
    stream.seek(0, io.SEEK_END)
    stream.write(voxels)
    return img


def _small_file_bytes(path: str | os.PathLike) -> bytes | None:
    """The bytes of a regular file of at most :data:`_ONE_READ_MAX_FILE_BYTES`, read with one ``open``;
    ``None`` otherwise (or when it cannot be read)."""
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
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_header(inflate: Any, compressed: bytes) -> tuple[Any, io.BytesIO] | None:
    """The NIfTI-1 image parsed from the inflated header and extensions, and the stream it reads its voxels
    from; ``None`` for anything nibabel.load should judge (NIfTI-2, a pair header, a large offset, a
    corrupt stream)."""
    # nibabel loads with the first NIfTI file: runs of other formats never import it
    import nibabel as nib

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
        # so the voxels written to its end are what the image's dataobj reads
        stream = io.BytesIO(prefix)
        return nib.Nifti1Image.from_stream(stream), stream
    except Exception:  # zlib.error, nibabel's header errors: nibabel.load gives its own verdict
        return None


def _inflate_voxels(inflate: Any, nbytes: int) -> bytes | None:
    """The ``nbytes`` voxel bytes that follow the header; ``None`` for a large volume or a stream cut short,
    corrupt or split in gzip members (nibabel reads, or refuses, those)."""
    if nbytes > _ONE_READ_MAX_DATA_BYTES:
        return None
    try:
        voxels = inflate.decompress(inflate.unconsumed_tail, nbytes) if nbytes else b""
    except zlib.error:
        return None
    return voxels if len(voxels) >= nbytes else None


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
        ``NibabelReader.read`` does, would parse every header twice (docs/data.md section 8).

        Raises:
            InputError: naming the file and what :func:`nifti_problem` found.
        """
        # nibabel loads with the first NIfTI file: runs of other formats never import it
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
                    raise InputError(f"{name}: {problem}")
            images.append(correct_nifti_header_if_necessary(img))
        return images if len(filenames) > 1 else images[0]


def nifti_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    """The pre-flight's verdict on a NIfTI file: its header, float voxels read to look for NaN/inf.

    Args:
        p: the file.
        kind: its family (from :func:`~lilaw_med.data.readers.image_kind`).
        decode: decode the pixels even where the header suffices.

    Returns:
        The header.

    Raises:
        InputError: one line naming the file and what is wrong.
    """
    # nibabel loads with the first NIfTI file: runs of other formats never import it
    import nibabel as nib

    try:
        img = nib.load(str(p))
        problem = nifti_problem(img)
    except Exception as e:
        raise InputError(f"{p}: not a readable NIfTI file ({one_line(e, with_type=True)}).") from e
    if problem:
        raise InputError(f"{p}: {problem}")
    # MONAI reads the first three axes as space and the rest as channels (one, by nifti_problem)
    shape = tuple(int(s) for s in img.shape[:3])
    finite = None
    is_float = np.issubdtype(img.get_data_dtype(), np.floating)
    if decode or is_float:
        try:
            arr = np.asanyarray(img.dataobj)
        except Exception as e:  # truncated data, bad scaling
            raise InputError(f"{p}: not a readable NIfTI file ({one_line(e, with_type=True)}).") from e
        finite = bool(np.isfinite(arr).all())
    return ImageHeader("nifti", shape, 1, decode or is_float, finite)

