"""Pre-flight check: open every datalist item once and report, per item, what is wrong.

The verdict on each file is :func:`lilaw_med.data.readers.read_header`'s (the loader's own rules,
the function ``predict`` runs too); each finding is a :class:`Problem` with its ``kind``. Files are
read by a pool of processes, each slide opened once for all its patches, and verdicts cached in a
manifest per datalist keyed by (path, size, mtime) and the installed decoders. Training calls
:func:`preflight_or_raise`, which refuses to start on any problem, or with ``skip_bad`` drops the
bad items and lists them in a CSV. See docs/data.md section 6.
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
from lilaw_med.errors import InputError, one_line
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


def _header_from_dict(h: dict[str, Any]) -> ImageHeader:
    return ImageHeader(h["kind"], tuple(h["shape"]), h["channels"], h["decoded"], h["finite"])


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
        return _header_from_dict(cached["header"]), None

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
        kept = self._live_entries()
        if self.lines > 1.25 * len(kept) + 16:
            self._rewrite(kept)
        _prune_manifests(self.file.parent, keep=self.file)

    def _live_entries(self) -> list[dict[str, Any]]:
        """The entries used by this check or whose file still exists."""
        return [
            e for k, e in self.entries.items() if k in self.used or os.path.exists(e.get("path", k.rpartition("|")[0]))
        ]

    def _rewrite(self, kept: Sequence[dict[str, Any]]) -> None:
        assert self.file is not None
        try:
            body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept)
            atomic_write(self.file, self._header_line() + body)
        except OSError as e:
            logger.warning("could not rewrite the pre-flight manifest %s: %s", self.file, e)


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
    bar = _progress_bar(progress, len(todo))
    pool = None
    try:
        pool = _process_pool(len(todo), len(chunks))
        for chunk, verdicts in zip(chunks, _chunk_verdicts(chunks, decode, pool), strict=True):
            manifest.append(_manifest_entries(chunk, verdicts))
            if bar is not None:
                bar.update(len(chunk))
            yield from ((path, v) for (path, _, _), v in zip(chunk, verdicts, strict=True))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def _progress_bar(progress: bool | None, total: int) -> tqdm | None:
    """A progress line when asked for, or (``progress=None``) when there are many files to read."""
    if progress or (progress is None and total >= _PROGRESS_MIN):
        return tqdm(total=total, desc="pre-flight", unit="file", mininterval=1.0)
    return None


def _process_pool(files: int, chunks: int) -> concurrent.futures.ProcessPoolExecutor | None:
    """A pool over the usable cores (at most one process per chunk) when there are many files; else ``None``
    (read in this process)."""
    workers = min(len(os.sched_getaffinity(0)), chunks) if files >= _PARALLEL_MIN else 1
    if workers <= 1:
        return None
    # fork: the children start at once with the readers imported; they touch no thread state
    context = multiprocessing.get_context("fork") if os.name == "posix" else None
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _chunk_verdicts(
    chunks: Sequence[Sequence[tuple[str, str, str | None]]],
    decode: bool,
    pool: concurrent.futures.ProcessPoolExecutor | None,
) -> Iterable[list[tuple[dict[str, Any] | None, str | None]]]:
    """Each chunk's verdicts, in order: from the pool, or read here."""
    paths = [[p for p, _, _ in c] for c in chunks]
    if pool is None:
        return (_verdicts(c, decode) for c in paths)
    return pool.map(_verdicts, paths, [decode] * len(chunks))


def _manifest_entries(
    chunk: Sequence[tuple[str, str, str | None]], verdicts: Sequence[tuple[dict[str, Any] | None, str | None]]
) -> list[dict[str, Any]]:
    """The manifest entries of a chunk's verdicts (a file without a fingerprint is not cached)."""
    return [
        {"key": key, "path": path, "fingerprint": fp, "error": error, "header": header}
        for (path, key, fp), (header, error) in zip(chunk, verdicts, strict=True)
        if fp is not None
    ]


def _slide_reasons(slide_path: str, items: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, str]:
    """Opens one slide, checks each of its patches, and closes it: ``item index -> reason`` for the bad ones."""
    try:
        # tiffslide (and zarr) load only when a slide is checked
        import tiffslide

        slide = tiffslide.TiffSlide(slide_path)
    except Exception as e:
        reason = f"not a readable slide ({one_line(e, with_type=True)})"
        return {index: reason for index, _ in items}
    try:
        return {index: r for index, item in items if (r := _patch_problem(slide, item)) is not None}
    finally:
        slide.close()


def _patch_problem(slide: Any, item: dict[str, Any]) -> str | None:
    """Why a whole-slide patch does not lie in its slide's level, or ``None``."""
    try:
        row, col, h, w, level = _patch_placement(item)
    except (TypeError, ValueError) as e:
        return f"invalid patch location/size ({e}); expected location [row, col] and size [h, w]"
    if not 0 <= level < slide.level_count:
        return f"patch level {level} out of range: the slide has {slide.level_count} level(s)"
    width0, height0 = slide.level_dimensions[0]
    down = slide.level_downsamples[level]
    if row < 0 or col < 0 or row + h * down > height0 or col + w * down > width0:
        return f"patch at (row {row}, col {col}) size {h}x{w} at level {level} lies outside the slide ({height0}x{width0})"
    return None


def _patch_placement(item: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """``(row, col, height, width, level)`` of a patch item; raises TypeError/ValueError on bad fields."""
    row, col = (int(v) for v in item["location"])
    size = item.get("size") or item.get("patch_size") or [1, 1]
    h, w = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    level = int(item.get("level", item.get("patch_level", 0)) or 0)
    return row, col, h, w, level


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
        for path in _image_paths(item.get("image") or []):
            if "location" in item:
                files[path] = _slide_exists(path, index, item, slides)
            elif path not in files:
                files[path] = _cached_or_queued(path, decode, manifest, todo)
    for path, (header, error) in _read_files(todo, decode, manifest, progress):
        files[path] = (None if header is None else _header_from_dict(header), error)
    # one slide open at a time, for all its patches: the open files stay bounded however many slides
    patches: dict[int, str] = {}
    for path, group in slides.items():
        patches.update(_slide_reasons(path, group))
    return files, patches


def _slide_exists(
    path: str, index: int, item: dict[str, Any], slides: dict[str, list[tuple[int, dict[str, Any]]]]
) -> tuple[None, None] | None:
    """``None`` for a missing slide; else ``(None, None)``, the patch queued in ``slides`` (checked later)."""
    if not os.path.exists(path):
        return None
    slides.setdefault(path, []).append((index, item))
    return None, None


def _cached_or_queued(
    path: str, decode: bool, manifest: _Manifest, todo: list[tuple[str, str, str | None]]
) -> tuple[ImageHeader | None, str | None] | None:
    """``None`` for a missing file; the manifest's verdict of an unchanged one; else ``(None, None)``, the
    file queued in ``todo``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = manifest.key(os.path.abspath(path), decode)
    fp = _fingerprint(path, st)
    cached = manifest.lookup(key, fp)
    if cached is not None:
        return cached
    todo.append((path, key, fp))
    return None, None


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
    found = _Findings(_loader_problems(datalist, splits))
    k = num_classes if num_classes is not None else len(datalist.class_names or []) or None
    ids = Counter(it.get("id") for _, it in items)
    for index, (split, item) in enumerate(items):
        reasons = _duplicate_findings(ids[item.get("id")])
        reasons.extend(_label_findings(item.get("label"), split, k))
        reasons.extend(_file_findings(item, index, files, patches, expected_dims))
        item_id, path_s = str(item.get("id") or ""), str(item.get("image") or "")
        for reason, kind in reasons:
            found.add(Problem(item_id, path_s, split, reason, kind))
    return found.problems


# a problem of this kind is not reported for an id that already has one of these kinds: an id is named
# a duplicate once, and a label the loader named missing or bad is not named missing again
_ONCE_PER_ID: dict[str, tuple[str, ...]] = {
    "duplicate": ("duplicate",),
    "missing_label": ("missing_label", "bad_label"),
}


class _Findings:
    """The problems found so far: one per (id, split, reason); the (id, kind) pairs already reported."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str, str]] = set()
        self._flagged: set[tuple[str, str]] = set()
        for p in problems:
            self.problems.append(p)
            self._seen.add((p.id, p.split, p.reason))
            self._flagged.add((p.id, p.kind))

    def add(self, problem: Problem) -> None:
        """Adds ``problem`` unless the same id, split and reason is already there, or its id already has a
        problem that :data:`_ONCE_PER_ID` says covers it."""
        if any((problem.id, kind) in self._flagged for kind in _ONCE_PER_ID.get(problem.kind, ())):
            return
        if (problem.id, problem.split, problem.reason) not in self._seen:
            self._seen.add((problem.id, problem.split, problem.reason))
            self._flagged.add((problem.id, problem.kind))
            self.problems.append(problem)


def _loader_problems(datalist: Datalist, splits: tuple[str, ...]) -> list[Problem]:
    """The loader's own problems in ``splits`` (a duplicate's split may be "training,test")."""
    return [p for p in datalist.problems if set(p.split.split(",")) & set(splits)]


def _duplicate_findings(count: int) -> list[tuple[str, ProblemKind]]:
    return [(f"duplicate id: {count} items share it", "duplicate")] if count > 1 else []


def _label_findings(label: Any, split: str, k: int | None) -> list[tuple[str, ProblemKind]]:
    """What is wrong with a resolved label: missing outside the test split, or out of range."""
    if label is None:
        return [("label missing", "missing_label")] if split != "test" else []
    if k is None:
        return []
    if isinstance(label, list):
        if len(label) != k or any(v not in (0, 1) for v in label):
            return [(f"label out of range: expected {k} flags of 0/1 but got {label}", "bad_label")]
    elif not 0 <= int(label) < k:
        return [(f"label out of range: expected a class index in [0, {k - 1}] but got {label}", "bad_label")]
    return []


def _file_findings(
    item: dict[str, Any],
    index: int,
    files: dict[str, tuple[ImageHeader | None, str | None] | None],
    patches: dict[int, str],
    expected_dims: int | None,
) -> Iterator[tuple[str, ProblemKind]]:
    """``(reason, kind)`` for each of the item's files that is missing, refused, of the wrong
    dimensionality, or (a slide patch) outside its slide."""
    for path in _image_paths(item.get("image") or []):
        verdict = files.get(path)
        if verdict is None:
            yield f"missing file: {path}", "missing_file"
        elif "location" in item:
            if index in patches:
                yield patches[index], "bad_patch"
        else:
            yield from _header_findings(verdict, path, expected_dims)


def _header_findings(
    verdict: tuple[ImageHeader | None, str | None], path: str, expected_dims: int | None
) -> Iterator[tuple[str, ProblemKind]]:
    header, error = verdict
    if error is not None:
        yield _without_path(error, path), "unreadable"
    elif expected_dims is not None and header is not None:
        # the rule predict applies too (header.ndim), so both give one verdict per file
        reason = header.dims_problem(expected_dims)
        if reason:
            yield reason, "wrong_dims"


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

    Example::

        datalist = preflight_or_raise(
            load_datalist("data/datalist.json", strict=False), skip_bad=True,
            rejected_csv="runs/r1/rejected_items.csv", expected_dims=2,
        )

    Raises:
        InputError: when there are problems and ``skip_bad`` is off (the message lists every bad
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
        raise InputError(
            f"the pre-flight check found {len(problems)} problem(s) in {datalist.source}; fix them or train "
            f"with --skip-bad to leave these items out:\n  {listing}"
        )
    return _without_bad(datalist, problems, rejected_csv)


def _without_bad(
    datalist: Datalist, problems: Sequence[Problem], rejected_csv: str | os.PathLike | None
) -> Datalist:
    """The datalist without the items that have problems (each one logged)."""
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
        raise InputError(f"every training item of {datalist.source} failed the pre-flight check.")
    return kept
