"""What ``predict`` takes as inputs (paths, a list file, a folder, glob patterns) and the verdict on each."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from lilaw_med.data.readers import ImageHeader, image_kind, read_header
from lilaw_med.errors import InputError

__all__ = ["check_input", "check_loaded_shape", "collect_inputs", "is_picture"]


def check_input(path: str | os.PathLike, spatial_dims: int) -> Path:
    """Checks one input as the pre-flight check does (:func:`lilaw_med.data.readers.read_header`) and
    that it has the model's dimensionality.

    Args:
        path: an image file or a DICOM series folder.
        spatial_dims: the model's spatial dimensions.

    Returns:
        The absolute path.

    Raises:
        FileNotFoundError, ValueError: what is wrong with it, in one line naming it.
    """
    p = Path(path)
    problem = read_header(p).dims_problem(spatial_dims)
    if problem:
        raise InputError(f"{p}: {problem}")
    return p.absolute()


def is_picture(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular PNG/JPEG/TIFF/BMP file (the readers' ``"pil"`` family).

    ``read_header`` decodes such a file to judge it; ``predict`` lets its loading transform decode
    it instead (the same Pillow reader and size rule), then applies :func:`check_loaded_shape`, so
    each picture is decoded once.
    """
    p = Path(path)
    try:
        return p.is_file() and image_kind(p) == "pil"
    except (ValueError, OSError):
        return False


def check_loaded_shape(path: str | os.PathLike, shape: Sequence[int], spatial_dims: int) -> None:
    """The shape rules of :func:`~lilaw_med.data.readers.read_header` on a loaded picture's spatial shape.

    Args:
        path: the picture (for the message).
        shape: its spatial shape as loaded (channel axis excluded).
        spatial_dims: the model's spatial dimensions.

    Raises:
        ValueError: for a one-pixel axis or the wrong dimensionality (read_header's messages).
    """
    header = ImageHeader("pil", tuple(int(s) for s in shape))
    if min(header.shape) < 2:
        raise InputError(f"{path}: degenerate image shape {header.shape}: every axis needs 2 pixels or more.")
    problem = header.dims_problem(spatial_dims)
    if problem:
        raise InputError(f"{path}: {problem}")


def _list_file(path: Path) -> list[str]:
    """The paths of a list file: one a line; blank lines and lines starting with ``#`` skipped;
    relative paths taken from the list file's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--list {path}: cannot read the list file ({e}).") from None
    out = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out.append(entry if os.path.isabs(entry) else str(path.parent / entry))
    return out


def _folder(path: Path) -> list[str]:
    """The image files under ``path`` (recursive, sorted, hidden names skipped)."""
    if not path.is_dir():
        raise InputError(f"--folder {path}: not a folder.")
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            try:
                image_kind(full)
            except ValueError:  # not an image file: notes, CSVs and the like sit beside images
                continue
            out.append(full)
    return out


def collect_inputs(
    paths: Sequence[str | os.PathLike] = (), list_file: str | os.PathLike | None = None,
    folder: str | os.PathLike | None = None,
) -> list[str]:
    """The inputs of ``predict``, in order: ``paths``, then those of ``list_file``, then ``folder``'s.

    A path that does not exist and holds a glob pattern (``*``, ``?``, ``[``; ``**`` recurses) is
    expanded, sorted; quote it so the shell does not expand it (100k paths exceed the command
    line's limit). Any other path is kept as given: a missing file gets its error in its row. A
    folder given as a path is a DICOM series (one 3D volume); ``folder`` is a folder of images, each
    file one input (DICOM series in it are read file by file).

    Example::

        collect_inputs(["scans/*.png"], list_file="more.txt")

    Args:
        paths: image files, DICOM series folders, or glob patterns.
        list_file: a text file of paths, one a line (``#`` comments, relative to its folder).
        folder: a folder whose image files (recursive) are inputs.

    Returns:
        The input paths.

    Raises:
        ValueError: for a pattern that matches nothing, an unreadable list file or a folder that is not one.
    """
    out: list[str] = []
    for raw in paths:
        text = os.fspath(raw)
        if not os.path.lexists(text) and glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: the pattern matches no file.")
            out.extend(matches)
        else:
            out.append(text)
    if list_file is not None:
        out.extend(_list_file(Path(list_file)))
    if folder is not None:
        out.extend(_folder(Path(folder)))
    return out
