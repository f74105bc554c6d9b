"""The data side of ``benchmarks/scale.py`` (issue 23): pre-flight, loading throughput and the cache budget
on synthetic data the functions write themselves.

Each function returns rows ``{task, items, seconds, peak_rss_mb, items_per_s, note}``:

* :func:`preflight_rows`: load a datalist of ``items`` tiny PNG files (1% labels missing, 1% ids
  duplicated, 0.5% files missing) and run the pre-flight check, first with an empty manifest, then
  again with the manifest of the first;
* :func:`loading_rows`: one epoch of ``items`` 1024-px grey PNGs through the radiology_2d chain at
  224 px with 0 workers and with the workers ``train.num_workers: auto`` gives, beside the plain MONAI
  chain of MONAI's tutorials (``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityd``,
  ``Resized`` to 224; ``DataLoader(num_workers=2)``), all at batch size 16, no cache;
* :func:`cache_rows`: the memory cache planned under a budget it exceeds (an artificially small
  one) falls back to the disk cache: the plan, filling and one epoch, beside the memory cache within
  its budget.

``peak_rss_mb`` is this process's peak resident memory during the task (``VmHWM``, reset before each
task through ``/proc/self/clear_refs``; the loader's and the pre-flight's worker processes are not in
it). Usage (a tiny check; the lead's ``benchmarks/scale.py`` calls the functions at full size)::

    python -m benchmarks.scale_data --items 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.measure import markdown_table, measured

__all__ = ["cache_rows", "loading_rows", "preflight_rows"]

# the training-split size `train.num_workers: auto` is resolved for (the 20k-image data set)
DEFAULT_SPLIT_ITEMS = 20_000


def _tiny_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_preflight_datalist(folder: Path, items: int) -> tuple[Path, dict[str, int]]:
    """``items`` tiny PNGs and a datalist over them with labels missing, ids duplicated, files missing."""
    img = folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    blob = _tiny_png()
    rows, counts = [], {"missing_label": 0, "duplicate": 0, "missing_file": 0}
    for i in range(items):
        name = f"{i:07d}.png"
        entry: dict[str, Any] = {"id": f"i{i}", "image": f"img/{name}", "label": i % 2}
        if i % 200 == 7:
            counts["missing_file"] += 1  # listed, never written
        else:
            (img / name).write_bytes(blob)
        if i % 100 == 3:
            entry.pop("label")
            counts["missing_label"] += 1
        if i % 100 == 5:
            entry["id"] = f"i{i - 1}"  # shares the id of the item before
            counts["duplicate"] += 1
        rows.append(entry)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"class_names": ["a", "b"], "training": rows[: items * 9 // 10],
                                    "validation": rows[items * 9 // 10 :]}))  # fmt: skip
    return datalist, counts


def preflight_rows(items: int = 100_000, workdir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The pre-flight of ``items`` tiny PNGs with labels missing, ids duplicated and files missing.

    Args:
        items: the number of datalist items.
        workdir: where the files go (``None``: a temporary folder, removed afterwards).

    Returns:
        Two rows: the first check (empty manifest) and a second one (every verdict from the manifest).
    """
    from lilaw_med.data.datalist import load_datalist
    from lilaw_med.data.preflight import check_datalist

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        datalist, counts = _write_preflight_datalist(Path(tmp), items)
        cache = Path(tmp) / "cache"
        planted = ", ".join(f"{v} {k}" for k, v in counts.items())
        for task in ("preflight (first check)", "preflight (manifest)"):
            with measured(task, items, "", rows) as out:
                dl = load_datalist(datalist, strict=False)
                problems = check_datalist(dl, expected_dims=2, cache_dir=cache, progress=False)
                found: dict[str, int] = {}
                for p in problems:
                    found[p.kind] = found.get(p.kind, 0) + 1
                out["note"] = (
                    f"load_datalist + check_datalist, {os.cpu_count()} cores; planted {planted}; found "
                    + ", ".join(f"{v} {k}" for k, v in sorted(found.items()))
                )
    return rows


def _write_pngs(folder: Path, items: int, size: int) -> list[dict[str, Any]]:
    """``items`` grey ``size`` x ``size`` PNGs like radiographs (smooth anatomy-like shading plus noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 120 + 60 * np.sin(3 * xx) * np.cos(2 * yy)
    out = []
    for i in range(items):
        pixels = np.clip(base + rng.normal(0, 12, (size, size)) + i % 30, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        Image.fromarray(pixels).save(path, compress_level=6)
        out.append({"id": str(i), "image": str(path), "label": i % 2})
    return out


def _epoch(loader: Any) -> int:
    n = 0
    for batch in loader:
        n += len(batch["image"])
    return n


def loading_rows(
    items: int = 512,
    size: int = 1024,
    batch_size: int = 16,
    split_items: int = DEFAULT_SPLIT_ITEMS,
    workdir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """One epoch of ``items`` ``size``-px PNGs through the radiology_2d chain at 224 px (0 workers, the
    ``auto`` workers) and through the plain MONAI chain with MONAI's tutorial settings.

    Args:
        items: the images read (each once).
        size: their width and height.
        batch_size: the loaders' batch size.
        split_items: the training-split size ``auto`` is resolved for.
        workdir: where the files go (``None``: a temporary folder, removed afterwards).

    Returns:
        Three rows, in the order above.
    """
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

    from lilaw_med.data.dataset import build_dataset
    from lilaw_med.data.transforms import build_transforms
    from lilaw_med.training.data import resolve_num_workers

    auto = resolve_num_workers("auto", split_items)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = _write_pngs(Path(tmp) / "png", items, size)
        ours = build_transforms("radiology_2d", {"spatial_size": [224, 224]}, train=False)
        plain = Compose(
            [LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
             Resized("image", spatial_size=(224, 224))]
        )  # fmt: skip
        cases: list[tuple[str, Callable[[], Any], str]] = [
            ("loading radiology_2d, 0 workers", lambda: DataLoader(build_dataset(data, ours), batch_size=batch_size, num_workers=0),
             "the preset chain, no cache"),
            (f"loading radiology_2d, auto = {auto} workers",
             lambda: DataLoader(build_dataset(data, ours), batch_size=batch_size, num_workers=auto),
             f"train.num_workers: auto for a {split_items}-item split on {len(os.sched_getaffinity(0))} cores"),
            ("loading plain MONAI chain, 2 workers", lambda: DataLoader(Dataset(data, plain), batch_size=batch_size, num_workers=2),
             "LoadImaged, EnsureChannelFirstd, ScaleIntensityd, Resized 224; MONAI tutorial num_workers=2"),
        ]  # fmt: skip
        for task, make, note in cases:
            with measured(task, items, f"{size}px PNG -> 224px, batch {batch_size}; {note}", rows):
                _epoch(make())
    return rows


def cache_rows(
    items: int = 256, size: int = 256, budget_mb: float = 1.0, workdir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The memory cache planned under a budget it exceeds (``budget_mb``) falls back to the disk cache; beside
    it, the same items in memory within a budget they fit.

    Args:
        items: the images.
        size: their width and height (the chain resizes them to 224 px).
        budget_mb: the artificially small budget in MiB.
        workdir: where the files go (``None``: a temporary folder, removed afterwards).

    Returns:
        Two rows (fallback, memory), each the plan + filling + one epoch.
    """
    from monai.data import DataLoader

    from lilaw_med.data.dataset import build_dataset, plan_cache
    from lilaw_med.data.transforms import build_transforms

    rows: list[dict[str, Any]] = []
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("lilaw_med.data.dataset")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            data = _write_pngs(Path(tmp) / "png", items, size)
            chain = build_transforms("radiology_2d", {"spatial_size": [224, 224]}, train=False)
            for task, budget in (("cache over budget -> disk", budget_mb * 2**20), ("cache within budget", float("inf"))):
                messages.clear()
                with measured(task, items, "", rows) as out:
                    plan = plan_cache("memory", data, chain, items, budget, Path(tmp) / "disk")
                    ds = build_dataset(data, chain, cache=plan.mode, cache_dir=Path(tmp) / "disk", num_workers=os.cpu_count())
                    _epoch(DataLoader(ds, batch_size=16, num_workers=0))
                    out["note"] = f"mode {plan.mode}; estimate {plan.estimate_bytes / 2**20:.1f} MiB; log: {messages[-1]}"
    finally:
        log.removeHandler(handler)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the three benchmarks at the given size and prints one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="items of each benchmark (tiny by default)")
    parser.add_argument("--size", type=int, default=1024, help="PNG size of the loading benchmark")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = preflight_rows(args.items)
    rows += loading_rows(args.items, args.size)
    rows += cache_rows(args.items, size=min(args.size, 256))
    print(markdown_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
