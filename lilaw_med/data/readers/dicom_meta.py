"""A DICOM dataset's header values (transfer syntax, geometry, bits) and the decoders of its syntax.

Shared by the reader (:mod:`~lilaw_med.data.readers.dicom`) and the series rules
(:mod:`~lilaw_med.data.readers.dicom_series`); pydicom loads with the first DICOM file.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Any

from lilaw_med.errors import InputError, one_line

# pydicom names a decoder plugin's requirements by import name; pip needs the distribution name
_DISTRIBUTION = {"gdcm": "python-gdcm"}


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
        InputError: when a value is not an integer (e.g. pydicom's ``badVR.dcm``).
    """
    try:
        return (
            int(ds.Rows),
            int(ds.Columns),
            int(ds.get("NumberOfFrames", 1) or 1),
            int(ds.get("SamplesPerPixel", 1) or 1),
        )
    except (ValueError, TypeError) as e:
        raise InputError(
            f"{filename}: invalid image header value ({one_line(e)}); expected integers in Rows, Columns, "
            f"NumberOfFrames, SamplesPerPixel."
        ) from e


def _dicom_bits(ds: Any) -> int:
    """BitsAllocated (16 when absent or not a positive integer: the size check still bounds the rest)."""
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return 16
    return bits if bits > 0 else 16


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
    reason = one_line(error)
    if family == "unknown" or isinstance(error, NotImplementedError):
        return InputError(
            f"{head}: pydicom has no decoder for this transfer syntax, so no installed decoder can read this file "
            f"(convert it to an uncompressed or a JPEG/JPEG-LS/JPEG 2000/RLE syntax)."
        )
    # RuntimeError: pydicom tried the plugins (or had none); other errors come from the header's
    # values (group 0028, lengths), which no codec would change
    if family != "encapsulated" or not isinstance(error, RuntimeError):
        return InputError(f"{head}: {reason}.")
    packages = _missing_codec_packages(uid)
    if not get_decoder(uid).is_available:
        fix = (
            f"pydicom's decoders for it: {' or '.join(packages)}"
            if packages
            else "pydicom lists no decoder to install"
        )
        return InputError(f"{head}: no installed decoder can read this transfer syntax; {fix}.")
    others = f"; pydicom's other decoders for it: {' or '.join(packages)}" if packages else ""
    return InputError(f"{head}: {reason}; no installed decoder can read this file{others}.")
