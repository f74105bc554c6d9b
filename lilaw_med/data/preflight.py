"""Pre-flight check: open every datalist item once and report, per item, what is wrong.

The verdict on each file is :func:`lilaw_med.data.readers.read_header`'s, the function
``predict`` runs on its inputs too, and it applies the loader's own rules: what it accepts, the
training transforms load; what it refuses, they refuse (or a documented rule refuses, such as a
one-slice "volume" for a 3D model). Found per item: missing file, unreadable, truncated or
undecodable file (with the decoders' reasons and the package that would add a decoder), DICOM
without pixel data, a SEG, a multi-frame colour file, a CIFTI or 4D NIfTI file, a series that
cannot form one volume, wrong dimensionality, NaN/inf pixels, label missing or out of range,
duplicate ids, whole-slide patches outside the slide. Headers only are read where that suffices
(uncompressed DICOM with pydicom's size rule, NIfTI, ``.npy``); compressed DICOM and pictures
(PNG/JPEG/TIFF/BMP) are decoded, float data (NIfTI, ``.npy``) is read to look for NaN/inf. Results are cached in a manifest keyed by
(path, size, modification time) and by the installed decoders, so a second check of an
unchanged 50k-series data set reads nothing, and installing a codec re-checks what it may fix.

Training calls :func:`preflight_or_raise`: by default it refuses to start on any problem and
names every bad item; with ``skip_bad`` it drops them and writes them (id, path, split, reason) to
the CSV file the caller names (training: the run folder's ``RunDir.rejected``). Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lilaw_med.data.datalist import Datalist, Problem, ProblemKind
from lilaw_med.data.readers import ImageHeader, decoder_environment, list_series_files, read_header
from lilaw_med.utils import atomic_write

__all__ = [
    "Problem",
    "check_datalist",
    "default_cache_dir",
    "preflight_or_raise",
    "write_problems_csv",
]

logger = logging.getLogger(__name__)

_MANIFEST = "preflight_manifest.json"
# 2: verdicts from the loader's rules (issue 15); entries of another version are checked anew
_MANIFEST_VERSION = 2


def default_cache_dir() -> Path:
    """The manifest cache folder: ``$LILAW_MED_CACHE``, else ``$XDG_CACHE_HOME/lilaw-med``, else ``~/.cache/lilaw-med``."""
    env = os.environ.get("LILAW_MED_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lilaw-med"


def _fingerprint(path: Path) -> str | None:
    """``size:mtime_ns`` of a file, or of a series folder's DICOM files together; None if missing."""
    try:
        if path.is_dir():
            files = list_series_files(path)
            stats = [os.stat(f) for f in files]
            return f"dir{len(files)}:{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a looping link in a series folder; read_header names it
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


class _Manifest:
    """The (path, size, mtime) -> verdict cache, one JSON file in the cache folder.

    The verdicts hold for the decoders installed when they were made (a codec installed since
    may read a file refused before), so the file records :func:`decoder_environment` and is
    dropped when it differs.
    """

    def __init__(self, cache_dir: Path | None) -> None:
        self.file = cache_dir / _MANIFEST if cache_dir is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        self.environment = decoder_environment()
        if self.file is not None and self.file.is_file():
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
                if data.get("version") == _MANIFEST_VERSION and data.get("environment") == self.environment:
                    self.entries = data.get("entries", {})
            except (OSError, ValueError):
                logger.warning("ignoring an unreadable pre-flight manifest %s", self.file)

    def header(self, path: Path, decode: bool) -> tuple[ImageHeader | None, str | None]:
        key = f"{os.path.abspath(path)}|{'decode' if decode else 'header'}"
        fp = _fingerprint(path)
        cached = self.entries.get(key)
        if cached is not None and cached.get("fingerprint") == fp and fp is not None:
            if cached.get("error"):
                return None, cached["error"]
            h = cached["header"]
            return ImageHeader(h["kind"], tuple(h["shape"]), h["channels"], h["decoded"], h["finite"]), None
        try:
            header, error = read_header(path, decode=decode), None
        except (ValueError, FileNotFoundError, OSError) as e:
            header, error = None, str(e)
        if fp is not None:
            self.entries[key] = {
                "fingerprint": fp,
                "error": error,
                "header": None
                if header is None
                else {
                    "kind": header.kind,
                    "shape": list(header.shape),
                    "channels": header.channels,
                    "decoded": header.decoded,
                    "finite": header.finite,
                },
            }
            self.dirty = True
        return header, error

    def save(self) -> None:
        if self.file is not None and self.dirty:
            try:
                atomic_write(
                    self.file,
                    json.dumps(
                        {
                            "version": _MANIFEST_VERSION,
                            "environment": self.environment,
                            "entries": self.entries,
                        }
                    ),
                )
            except OSError as e:  # a read-only cache must not stop the check
                logger.warning("could not write the pre-flight manifest %s: %s", self.file, e)


def _dims_problem(header: ImageHeader, expected_dims: int) -> str | None:
    # the rule predict applies too (header.ndim), so both give one verdict per file
    return header.dims_problem(expected_dims)


def check_datalist(
    datalist: Datalist,
    expected_dims: int | None = None,
    num_classes: int | None = None,
    decode: bool = False,
    cache_dir: str | os.PathLike | None = None,
    splits: Iterable[str] = ("training", "validation", "test"),
    progress: bool = False,
) -> list[Problem]:
    """Opens every item of a datalist once and returns every problem found.

    Args:
        datalist: the loaded datalist (load with ``strict=False`` to have label and id problems
            reported here rather than raised by the loader).
        expected_dims: 2 or 3 spatial dimensions expected (``None``: not checked).
        num_classes: the number of classes labels must lie under (default: the datalist's
            ``class_names`` length when set).
        decode: decode all pixel data (slower; also reads uncompressed DICOM and integer
            NIfTI data, finding NaN/inf in DICOM float pixel data). Compressed DICOM, pictures
            and float NIfTI/``.npy`` data are always decoded.
        cache_dir: folder of the manifest cache; ``None`` disables the cache.
        splits: the splits to check.
        progress: show a tqdm progress bar.

    Returns:
        The problems (:class:`~lilaw_med.data.datalist.Problem`: id, path, split, reason),
        empty when everything is fine.
    """
    splits = tuple(splits)
    problems: list[Problem] = [p for p in datalist.problems if any(s in splits for s in p.split.split(","))]
    already = {(p.id, p.split, p.reason) for p in problems}
    # (id, kind) already reported: an id is named a duplicate, or its label missing, once
    flagged = {(p.id, p.kind) for p in problems}
    k = (
        num_classes
        if num_classes is not None
        else (len(datalist.class_names) if datalist.class_names else None)
    )
    manifest = _Manifest(Path(cache_dir) if cache_dir is not None else None)
    items = [(s, it) for s, it in datalist.iter_items() if s in splits]

    ids = Counter(it.get("id") for _, it in items)
    slides: dict[str, Any] = {}
    iterator: Iterable[tuple[str, dict[str, Any]]] = items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(items, desc="pre-flight", unit="item")
    for split, item in iterator:
        item_id = str(item.get("id") or "")
        image = item.get("image") or ""
        path_s = str(image)

        def add(
            reason: str, kind: ProblemKind, split: str = split, item_id: str = item_id, path_s: str = path_s
        ) -> None:
            if (item_id, split, reason) not in already:
                already.add((item_id, split, reason))
                flagged.add((item_id, kind))
                problems.append(Problem(item_id, path_s, split, reason, kind))

        if ids[item.get("id")] > 1 and (item_id, "duplicate") not in flagged:
            add(f"duplicate id: {ids[item.get('id')]} items share it", "duplicate")
        label = item.get("label")
        if label is None:
            if split != "test" and not {(item_id, "missing_label"), (item_id, "bad_label")} & flagged:
                add("label missing", "missing_label")
        elif k is not None:
            if isinstance(label, list):
                if len(label) != k or any(v not in (0, 1) for v in label):
                    add(f"label out of range: expected {k} flags of 0/1 but got {label}", "bad_label")
            elif not 0 <= int(label) < k:
                add(f"label out of range: expected a class index in [0, {k - 1}] but got {label}", "bad_label")
        if not image:
            continue
        paths = [Path(p) for p in image] if isinstance(image, list) else [Path(image)]
        for path in paths:
            if not path.exists():
                add(f"missing file: {path}", "missing_file")
                continue
            if "location" in item:
                reason = _check_patch(path, item, slides)
                if reason:
                    add(reason, "bad_patch")
                continue
            header, error = manifest.header(path, decode)
            if error is not None:
                # the reader names the file; the Problem already carries the path
                add(error[len(str(path)) + 2 :] if error.startswith(f"{path}: ") else error, "unreadable")
                continue
            assert header is not None
            if expected_dims is not None:
                reason = _dims_problem(header, expected_dims)
                if reason:
                    add(reason, "wrong_dims")
    manifest.save()
    for slide in slides.values():
        if slide is not None and hasattr(slide, "close"):
            slide.close()
    logger.info("pre-flight: %d item(s) checked, %d problem(s)", len(items), len(problems))
    return problems


def _check_patch(path: Path, item: dict[str, Any], slides: dict[str, Any]) -> str | None:
    """Checks a whole-slide patch: the slide opens and the patch lies inside the level."""
    key = str(path)
    if key not in slides:
        try:
            import tiffslide

            slides[key] = tiffslide.TiffSlide(key)
        except Exception as e:
            slides[key] = None
            slides[key + "#error"] = f"not a readable slide ({type(e).__name__}: {e})"
    slide = slides[key]
    if slide is None:
        return slides[key + "#error"]
    try:
        row, col = (int(v) for v in item["location"])
        size = item.get("size") or item.get("patch_size") or [1, 1]
        h, w = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
        level = int(item.get("level", item.get("patch_level", 0)) or 0)
    except (TypeError, ValueError) as e:
        return f"invalid patch location/size ({e}); expected location [row, col] and size [h, w]"
    if not 0 <= level < slide.level_count:
        return f"patch level {level} out of range: the slide has {slide.level_count} level(s)"
    width0, height0 = slide.level_dimensions[0]
    down = slide.level_downsamples[level]
    if row < 0 or col < 0 or row + h * down > height0 or col + w * down > width0:
        return f"patch at (row {row}, col {col}) size {h}x{w} at level {level} lies outside the slide ({height0}x{width0})"
    return None


def write_problems_csv(problems: Iterable[Problem], path: str | os.PathLike) -> Path:
    """Writes problems as CSV (id, path, split, reason), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "split", "reason"])
    for p in problems:
        writer.writerow([p.id, p.path, p.split, p.reason])
    return atomic_write(path, buf.getvalue())


def preflight_or_raise(
    datalist: Datalist,
    skip_bad: bool,
    rejected_csv: str | os.PathLike | None,
    expected_dims: int | None = None,
    num_classes: int | None = None,
    cache_dir: str | os.PathLike | None = "default",
    decode: bool = False,
) -> Datalist:
    """The check a training run calls before it starts.

    Args:
        datalist: the loaded datalist.
        skip_bad: drop bad items (and write them to ``rejected_csv``) instead of refusing to start.
        rejected_csv: where the dropped items go (the run folder's ``RunDir.rejected``; ``None``:
            nothing written).
        expected_dims: 2 or 3 spatial dimensions expected.
        num_classes: labels must lie under this (default: ``len(class_names)``).
        cache_dir: the manifest cache folder; ``"default"`` uses :func:`default_cache_dir`,
            ``None`` disables caching.
        decode: decode all pixel data.

    Returns:
        The datalist unchanged when there is no problem; with ``skip_bad``, a copy without the
        bad items (and with ``problems`` emptied).

    Raises:
        ValueError: when there are problems and ``skip_bad`` is off (the message lists every bad
            item), or when skipping leaves no training item.
    """
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    problems = check_datalist(datalist, expected_dims, num_classes, decode=decode, cache_dir=cache)
    if skip_bad and rejected_csv is not None:
        write_problems_csv(problems, rejected_csv)
    if not problems:
        return datalist
    if not skip_bad:
        listing = "\n  ".join(str(p) for p in problems)
        raise ValueError(
            f"the pre-flight check found {len(problems)} problem(s) in {datalist.source}; fix them or train "
            f"with --skip-bad to leave these items out:\n  {listing}"
        )
    bad = {p.id for p in problems}
    kept = replace(datalist.without_ids(bad), problems=[])
    logger.warning(
        "pre-flight: leaving out %d bad item(s) (listed with reasons in %s)",
        len(bad),
        rejected_csv if rejected_csv is not None else "the log",
    )
    for p in problems:
        logger.warning("rejected %s", p)
    if not kept.training:
        raise ValueError(f"every training item of {datalist.source} failed the pre-flight check.")
    return kept
