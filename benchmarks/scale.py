"""The scale benchmark (issue 23): one table of time, peak RSS and items/s at the sizes users train at,
on synthetic data the benchmark writes itself.

Parts (each in its own process, so every peak RSS is that part's own):

==========  =====================================================================================
preflight   the pre-flight of 100k items with labels missing, ids duplicated, files missing
            (:func:`benchmarks.scale_data.preflight_rows`)
loading     1024-px PNGs through the radiology_2d chain at 224 px with 0 and the default workers,
            beside the plain MONAI chain with MONAI's tutorial settings (``scale_data.loading_rows``)
cache       the memory cache planned over its budget falls back to the disk cache (``cache_rows``)
threshold   the binary threshold at 150k validation items (``scale_predict.threshold_rows``)
audit       1M items x 20 epochs x 9 classes from synthetic dynamics (``scale_audit.audit_rows``)
predict     ``lilaw-med predict`` over 5k, 10k and 20k 1024-px PNGs (``scale_predict.predict_rows``)
train       ``lilaw-med train`` on 20k 1024-px PNGs for one epoch at 224 px, with a cache budget
            (``data.cache_memory_fraction``) that forces the fallback to the disk cache
==========  =====================================================================================

Usage::

    python -m benchmarks.scale                         # every part, the issue's sizes
    python -m benchmarks.scale --parts audit threshold
    python -m benchmarks.scale --quick                 # tiny sizes: checks that every part runs

Writes ``benchmarks/out/scale.json`` and ``scale.md`` (rows of the parts run, merged with earlier ones).
The PNG sets hold 64 distinct images, the rest hard links to them: decoding costs the same per file,
writing 20k distinct 1024-px PNGs would take longer than the benchmark itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import markdown_table, row
from lilaw_med.utils import atomic_write

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = Path(__file__).resolve().parent / "out"
PARTS = ("preflight", "loading", "cache", "threshold", "audit", "predict", "train")

FULL = {"preflight": 100_000, "loading": 3_000, "cache": 256, "threshold": 150_000, "audit": 1_000_000,
        "predict": 20_000, "train": 20_000}
QUICK = {"preflight": 2_000, "loading": 32, "cache": 32, "threshold": 5_000, "audit": 5_000, "predict": 64, "train": 64}
TRAIN_CACHE_FRACTION = 0.01
"""``data.cache_memory_fraction`` of the train part: 1% of this machine's memory (about 230 MB) against
about 4 GB of 224-px float32 images, so the memory cache must fall back."""


def _train_rows(items: int, root: Path, px: int = 1024) -> list[dict[str, Any]]:
    """``lilaw-med train`` on ``items`` PNGs of ``px`` px, one epoch, in a child process (its peak RSS
    is the largest of the child and its loader workers: ``RUSAGE_CHILDREN``)."""
    from benchmarks.scale_predict import _write_pngs

    paths = _write_pngs(root / f"png_{px}", items, px)
    datalist = root / f"train_{items}.csv"
    with datalist.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows([str(p), i % 2] for i, p in enumerate(paths))
    run = root / f"train_run_{items}"
    sets = [f"data.datalist={datalist}", "data.sample_data=false", "data.options.spatial_size=[224,224]",
            "data.cache=memory", f"data.cache_memory_fraction={TRAIN_CACHE_FRACTION}", f"data.cache_dir={root / 'cache'}",
            "train.epochs=1", "train.batch_size=64", "lilaw.warmup_epochs=0", "train.progress=false",
            "output.overwrite=true"]
    cmd = [sys.executable, "-m", "lilaw_med", "train", "--config", str(REPO / "configs" / "radiology_2d.yaml")]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "-o", str(run)], capture_output=True, text=True, cwd=root)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log = proc.stdout + proc.stderr
    fallback = next((line.strip() for line in log.splitlines() if "cache" in line.lower() and "budget" in line.lower()), "")
    return [row("train, 1 epoch (radiology_2d, small_cnn, 224 px)", items, seconds, peak,
                f"{px}-px PNG; data.cache_memory_fraction={TRAIN_CACHE_FRACTION}: {fallback or 'no fallback line logged'}; "
                "the time includes start-up, pre-flight, cache filling and the end-of-run evaluation")]


def run_part(part: str, items: int, root: Path) -> list[dict[str, Any]]:
    """Runs one part in this process and returns its rows."""
    root.mkdir(parents=True, exist_ok=True)
    if part == "preflight":
        from benchmarks.scale_data import preflight_rows

        return preflight_rows(items, workdir=root)
    if part == "loading":
        from benchmarks.scale_data import loading_rows

        return loading_rows(items, 1024, workdir=root)
    if part == "cache":
        from benchmarks.scale_data import cache_rows

        return cache_rows(items, workdir=root)
    if part == "threshold":
        from benchmarks.scale_predict import threshold_rows

        return threshold_rows(items, old_items=min(8_000, items))
    if part == "audit":
        from benchmarks.scale_audit import audit_rows

        return audit_rows(items, workdir=root)
    if part == "predict":
        from benchmarks.scale_predict import predict_rows

        return predict_rows(items, root=root / "predict")
    if part == "train":
        return _train_rows(items, root)
    raise ValueError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that every part runs")
    p.add_argument("--root", type=Path, default=OUT_DIR / "scale_work", help="where the synthetic data goes")
    p.add_argument("--child", metavar="PART", help=argparse.SUPPRESS)
    p.add_argument("--items", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # one part in this process: its rows as JSON on the last line
        print(json.dumps(run_part(args.child, args.items, args.root)))
        return 0
    sizes = QUICK if args.quick else FULL
    out_json = OUT_DIR / ("scale_quick.json" if args.quick else "scale.json")
    rows: dict[str, list[dict[str, Any]]] = json.loads(out_json.read_text()) if out_json.is_file() else {}
    for part in args.parts:
        cmd = [sys.executable, "-m", "benchmarks.scale", "--child", part, "--items", str(sizes[part]),
               "--root", str(args.root)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            print(f"{part}: failed (rc {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}", file=sys.stderr)
            continue
        rows[part] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(markdown_table(rows[part]), flush=True)
        atomic_write(out_json, json.dumps(rows, indent=1, default=float))
    ordered = [r for part in PARTS for r in rows.get(part, [])]
    atomic_write(out_json.with_suffix(".md"), markdown_table(ordered) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
