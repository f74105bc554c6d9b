"""Pre-flight check: open every datalist item once and report, per item, what is wrong.

The verdict on each file is :func:`lilaw_med.data.readers.read_header`'s, the function ``predict``
runs on its inputs too, and it applies the loader's own rules: what it accepts, the training
transforms load; what it refuses, they refuse. Found per item (each a :class:`Problem` with its
``kind``): missing file, a file the reader refuses, wrong dimensionality, label missing or out of
range, duplicate ids, whole-slide patches outside the slide. See docs/data.md for what is read per
format.

**At scale.** Every step is linear in the items (ids and labels through dicts); files are read by a
pool of processes over the usable cores, with one progress line when there are many; a whole-slide
image is opened once for all its patches and closed before the next, so the open files stay bounded.
Verdicts go to a manifest, one per datalist, keyed by (path, size, modification time) and by the
installed decoders, appended chunk by chunk (a crash loses one chunk); a second check of an unchanged
data set reads nothing, and installing a codec re-checks what it may fix.

Training calls :func:`preflight_or_raise`: by default it refuses to start on any problem and
names every bad item; with ``skip_bad`` it drops them and writes them (id, path, split, reason) to
the CSV file the caller names (training: the run folder's ``RunDir.rejected``). Nothing is dropped silently.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from lilaw_med.data.datalist import Datalist, Problem, ProblemKind
from lilaw_med.data.readers import ImageHeader, decoder_environment, list_series_files, read_header
from lilaw_med.utils import atomic_write

__all__ = [
    "CACHE_DIR_ENV",
    "Problem",
    "check_datalist",
    "default_cache_dir",
    "manifest_path",
    "preflight_or_raise",
    "write_problems_csv",
]

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "LILAW_MED_CACHE_DIR"
"""The environment variable naming the cache folder (the test suite points it at a temporary one)."""
# 3: one JSON Lines manifest per datalist; entries of another version are checked anew
_MANIFEST_VERSION = 3
_MANIFEST_FOLDER = "preflight"
# manifests of datalists not checked for the longest time go beyond this many
_MAX_MANIFESTS = 64
# files read per task of the process pool, and appended to the manifest at once
_CHUNK = 256
# fewer files to read than this: read in this process (a pool's start costs more)
_PARALLEL_MIN = 2 * _CHUNK
# more files to read than this (about a few seconds): one progress line
_PROGRESS_MIN = 5000


def default_cache_dir() -> Path:
    """The cache folder: ``$LILAW_MED_CACHE_DIR``, else ``$XDG_CACHE_HOME/lilaw-med``, else ``~/.cache/lilaw-med``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lilaw-med"


def manifest_path(cache_dir: str | os.PathLike, source: str | os.PathLike) -> Path:
    """The manifest of the datalist file ``source`` in ``cache_dir``: one per datalist, named by the hash
    of its absolute path.

    Args:
        cache_dir: the cache folder.
        source: the datalist file (``Datalist.source``).

    Returns:
        ``cache_dir/preflight/<sha1 of the path, 16 hex digits>.jsonl``.
    """
    digest = hashlib.sha1(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_dir) / _MANIFEST_FOLDER / f"{digest}.jsonl"


def _fingerprint(path: str, st: os.stat_result) -> str | None:
    """``size:mtime_ns`` of a file (``st``: its ``stat``), or of a series folder's DICOM files together;
    ``None`` when a series file cannot be read."""
    if not stat.S_ISDIR(st.st_mode):
        return f"{st.st_size}:{st.st_mtime_ns}"
    try:
        files = list_series_files(path)
        stats = [os.stat(f) for f in files]
    except (OSError, ValueError):  # ValueError: a looping link in a series folder; read_header names it
        return None
    return f"dir{len(files)}:{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"


def _header_dict(header: ImageHeader) -> dict[str, Any]:
    return {
        "kind": header.kind, "shape": list(header.shape), "channels": header.channels,
        "decoded": header.decoded, "finite": header.finite,
    }  # fmt: skip


def _verdict(path: str, decode: bool) -> tuple[dict[str, Any] | None, str | None]:
    """``(header as a dict, None)`` or ``(None, the one-line error)`` of one file."""
    try:
        return _header_dict(read_header(path, decode=decode)), None
    except (ValueError, FileNotFoundError, OSError) as e:
        return None, str(e)


def _verdicts(paths: Sequence[str], decode: bool) -> list[tuple[dict[str, Any] | None, str | None]]:
    """The verdicts of a chunk of files (one task of the process pool)."""
    return [_verdict(p, decode) for p in paths]


class _Manifest:
    """The (path, size, mtime) -> verdict cache of one datalist: a JSON Lines file whose first line
    records the format version and :func:`decoder_environment` (verdicts hold for the decoders
    installed when they were made), then one entry per line, appended chunk by chunk; the last entry
    of a key wins, and a line cut short by a crash is skipped.
    """

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.entries: dict[str, dict[str, Any]] = {}
        self.environment = decoder_environment()
        self.used: set[str] = set()
        self.lines = 0
        self._out: TextIO | None = None
        self._fresh = True  # the file holds no valid header yet: written anew on the first append
        if file is not None and file.is_file():
            try:
                self._load(file)
            except (OSError, UnicodeDecodeError):
                logger.warning("ignoring an unreadable pre-flight manifest %s", file)

    def _load(self, file: Path) -> None:
        with file.open(encoding="utf-8") as f:
            try:
                head = json.loads(f.readline())
            except ValueError:
                return
            if head.get("version") != _MANIFEST_VERSION or head.get("environment") != self.environment:
                return
            self._fresh = False
            for line in f:
                self.lines += 1
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # cut short by a crash (or glued to the next append): that entry is read again

    @staticmethod
    def key(path: str, decode: bool) -> str:
        return f"{path}|{'decode' if decode else 'header'}"

    def lookup(self, key: str, fingerprint: str | None) -> tuple[ImageHeader | None, str | None] | None:
        """The cached verdict of an unchanged file, else ``None``."""
        cached = self.entries.get(key)
        if cached is None or fingerprint is None or cached.get("fingerprint") != fingerprint:
            return None
        self.used.add(key)
        if cached.get("error"):
            return None, cached["error"]
        h = cached["header"]
        return ImageHeader(h["kind"], tuple(h["shape"]), h["channels"], h["decoded"], h["finite"]), None

    def append(self, entries: Iterable[dict[str, Any]]) -> None:
        """Records entries in memory and, when there is a file, on disk at once (flushed)."""
        batch = []
        for entry in entries:
            self.entries[entry["key"]] = entry
            self.used.add(entry["key"])
            batch.append(json.dumps(entry, separators=(",", ":")))
        if self.file is None or not batch:
            return
        try:
            if self._out is None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                if self._fresh:
                    atomic_write(self.file, self._header_line())
                    self._fresh, self.lines = False, 0
                self._out = self.file.open("a", encoding="utf-8")
                self._out.write("\n")  # ends a line a crash may have cut, so the next entry stands alone
            self._out.write("\n".join(batch) + "\n")
            self._out.flush()
            self.lines += len(batch)
        except OSError as e:  # a read-only cache must not stop the check
            logger.warning("could not write the pre-flight manifest %s: %s", self.file, e)
            self.file = None

    def _header_line(self) -> str:
        return json.dumps({"version": _MANIFEST_VERSION, "environment": self.environment}) + "\n"

    def close(self) -> None:
        """Closes the file; rewrites it without stale entries (files gone, superseded lines) when they are
        a fifth of it or more, and drops the manifests of the datalists checked longest ago beyond
        :data:`_MAX_MANIFESTS`."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.file is None or not self.file.is_file():
            return
        kept = {
            k: e for k, e in self.entries.items() if k in self.used or os.path.exists(e.get("path", k.rpartition("|")[0]))
        }
        if self.lines > 1.25 * len(kept) + 16:
            try:
                body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept.values())
                atomic_write(self.file, self._header_line() + body)
            except OSError as e:
                logger.warning("could not rewrite the pre-flight manifest %s: %s", self.file, e)
        _prune_manifests(self.file.parent, keep=self.file)


def _prune_manifests(folder: Path, keep: Path) -> None:
    try:
        files = sorted(folder.glob("*.jsonl"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in [f for f in files if f != keep][_MAX_MANIFESTS - 1 :]:
        try:
            old.unlink()
        except OSError:
            pass


def _image_paths(image: Any) -> list[str]:
    return [str(p) for p in image] if isinstance(image, list) else [str(image)]


def _without_path(error: str, path: str) -> str:
    """The reader's message without the file name it starts with (the Problem carries the path)."""
    for shown in (path, str(Path(path))):  # the reader names str(Path(path))
        if error.startswith(f"{shown}: "):
            return error[len(shown) + 2 :]
    return error


def _read_files(
    todo: Sequence[tuple[str, str, str | None]], decode: bool, manifest: _Manifest, progress: bool | None
) -> Iterator[tuple[str, tuple[dict[str, Any] | None, str | None]]]:
    """Reads ``todo`` ((path, manifest key, fingerprint)) in chunks, in a process pool over the usable cores
    when there are many, recording each chunk in the manifest as it comes; yields ``(path, verdict)``."""
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    workers = min(len(os.sched_getaffinity(0)), len(chunks)) if len(todo) >= _PARALLEL_MIN else 1
    bar = None
    if progress or (progress is None and len(todo) >= _PROGRESS_MIN):

        bar = tqdm(total=len(todo), desc="pre-flight", unit="file", mininterval=1.0)
    pool = None
    try:
        if workers > 1:
            # fork: the children start at once with the readers imported; they touch no thread state
            context = multiprocessing.get_context("fork") if os.name == "posix" else None
            pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
            results: Iterable[list[Any]] = pool.map(_verdicts, [[p for p, _, _ in c] for c in chunks], [decode] * len(chunks))
        else:
            results = (_verdicts([p for p, _, _ in c], decode) for c in chunks)
        for chunk, verdicts in zip(chunks, results, strict=True):
            manifest.append(
                {"key": key, "path": path, "fingerprint": fp, "error": error, "header": header}
                for (path, key, fp), (header, error) in zip(chunk, verdicts, strict=True)
                if fp is not None
            )
            if bar is not None:
                bar.update(len(chunk))
            yield from ((path, v) for (path, _, _), v in zip(chunk, verdicts, strict=True))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def _slide_reasons(slide_path: str, items: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, str]:
    """Opens one slide, checks each of its patches, and closes it: ``item index -> reason`` for the bad ones."""
    try:
        # tiffslide (and zarr) load only when a slide is checked
        import tiffslide

        slide = tiffslide.TiffSlide(slide_path)
    except Exception as e:
        reason = f"not a readable slide ({type(e).__name__}: {e})"
        return {index: reason for index, _ in items}
    try:
        return {index: r for index, item in items if (r := _patch_problem(slide, item)) is not None}
    finally:
        slide.close()


def _patch_problem(slide: Any, item: dict[str, Any]) -> str | None:
    """Why a whole-slide patch does not lie in its slide's level, or ``None``."""
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


def check_datalist(
    datalist: Datalist,
    expected_dims: int | None = None,
    num_classes: int | None = None,
    decode: bool = False,
    cache_dir: str | os.PathLike | None = None,
    splits: Iterable[str] = ("training", "validation", "test"),
    progress: bool | None = None,
) -> list[Problem]:
    """Opens every item of a datalist once and returns every problem found.

    Example::

        problems = check_datalist(load_datalist("data/datalist.json", strict=False), expected_dims=2)
        for p in problems:
            print(p.kind, p)

    Args:
        datalist: the loaded datalist (load with ``strict=False`` to have label and id problems
            reported here rather than raised by the loader).
        expected_dims: 2 or 3 spatial dimensions expected (``None``: not checked).
        num_classes: the number of classes labels must lie under (default: the datalist's
            ``class_names`` length when set).
        decode: decode all pixel data (slower; also reads uncompressed DICOM and integer
            NIfTI data, finding NaN/inf in DICOM float pixel data). Compressed DICOM, pictures
            and float NIfTI/``.npy`` data are always decoded.
        cache_dir: folder of the manifests (:func:`manifest_path`); ``None`` disables the cache.
        splits: the splits to check.
        progress: show a progress line (``None``: when more than a few thousand files are read).

    Returns:
        The problems (:class:`~lilaw_med.data.datalist.Problem`: id, path, split, reason, kind),
        empty when everything is fine.
    """
    splits = tuple(splits)
    items = [(s, it) for s, it in datalist.iter_items() if s in splits]
    manifest = _Manifest(manifest_path(cache_dir, datalist.source) if cache_dir is not None else None)
    try:
        files, patches = _file_verdicts(items, decode, manifest, progress)
    finally:
        manifest.close()
    problems = _item_problems(datalist, items, splits, num_classes, expected_dims, files, patches)
    logger.info("pre-flight: %d item(s) checked, %d problem(s)", len(items), len(problems))
    return problems


def _file_verdicts(
    items: Sequence[tuple[str, dict[str, Any]]], decode: bool, manifest: _Manifest, progress: bool | None
) -> tuple[dict[str, tuple[ImageHeader | None, str | None] | None], dict[int, str]]:
    """Each file's verdict (``None`` for a missing one), from the manifest or read; each bad patch's reason."""
    files: dict[str, tuple[ImageHeader | None, str | None] | None] = {}
    todo: list[tuple[str, str, str | None]] = []
    slides: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, (_, item) in enumerate(items):
        image = item.get("image") or ""
        if not image:
            continue
        for path in _image_paths(image):
            if path in files and "location" not in item:
                continue
            try:
                st = os.stat(path)
            except OSError:
                files[path] = None
                continue
            if "location" in item:
                files[path] = (None, None)  # it exists; its patches are checked below
                slides.setdefault(path, []).append((index, item))
                continue
            key = manifest.key(os.path.abspath(path), decode)
            fp = _fingerprint(path, st)
            cached = manifest.lookup(key, fp)
            files[path] = cached if cached is not None else (None, None)
            if cached is None:
                todo.append((path, key, fp))
    for path, (header, error) in _read_files(todo, decode, manifest, progress):
        files[path] = (None if header is None else ImageHeader(
            header["kind"], tuple(header["shape"]), header["channels"], header["decoded"], header["finite"]
        ), error)  # fmt: skip
    # one slide open at a time, for all its patches: the open files stay bounded however many slides
    patches: dict[int, str] = {}
    for path, group in slides.items():
        patches.update(_slide_reasons(path, group))
    return files, patches


def _item_problems(
    datalist: Datalist,
    items: Sequence[tuple[str, dict[str, Any]]],
    splits: tuple[str, ...],
    num_classes: int | None,
    expected_dims: int | None,
    files: dict[str, tuple[ImageHeader | None, str | None] | None],
    patches: dict[int, str],
) -> list[Problem]:
    """The problems of every item, in item order, after the datalist's own (one per id and kind)."""
    problems: list[Problem] = [p for p in datalist.problems if any(s in splits for s in p.split.split(","))]
    already = {(p.id, p.split, p.reason) for p in problems}
    # (id, kind) already reported: an id is named a duplicate, or its label missing, once
    flagged = {(p.id, p.kind) for p in problems}
    k = num_classes if num_classes is not None else (len(datalist.class_names) if datalist.class_names else None)
    ids = Counter(it.get("id") for _, it in items)

    for index, (split, item) in enumerate(items):
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
        for path in _image_paths(image):
            verdict = files.get(path)
            if verdict is None:
                add(f"missing file: {path}", "missing_file")
                continue
            if "location" in item:
                if index in patches:
                    add(patches[index], "bad_patch")
                continue
            header, error = verdict
            if error is not None:
                add(_without_path(error, path), "unreadable")
                continue
            if expected_dims is not None and header is not None:
                # the rule predict applies too (header.ndim), so both give one verdict per file
                reason = header.dims_problem(expected_dims)
                if reason:
                    add(reason, "wrong_dims")
    return problems


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
