"""Scale of the threshold and of ``predict`` (issue 23, items 3 and 5): rows of time, peak RSS and items/s.

Two tasks, each a function returning row dicts ``{task, items, seconds, peak_rss_mb, items_per_s, note}``:

* :func:`threshold_rows`: :func:`lilaw_med.training.evaluation.choose_threshold` (exact, by sorting) at
  150k validation items, against the former implementation (one scikit-learn call per distinct
  score, kept here as :func:`threshold_by_sklearn_calls`) measured at 8k items and extrapolated to
  150k as ``n^2`` (``n`` candidates x one pass over ``n`` items each); the two agree at 8k.
* :func:`predict_rows`: ``lilaw-med predict`` over N PNG files of 1024 px written here (a few distinct
  images, the rest hard links to them: the same decode per file without gigabytes of disk), by a
  run trained here for one epoch on 32 small images (the radiology_2d preset at its default size,
  ``small_cnn`` unless ``network`` says otherwise). Each count N/4, N/2 and N runs in its own child
  process, so each peak RSS (``VmHWM``) is that run's: flat peaks show the memory does not grow with
  the number of inputs.

Run (the lead runs the full sizes; the defaults)::

    nice -n 10 python -m benchmarks.scale_predict --items 20000

A quick check of the script itself: ``--items 8 --px 64 --threshold-items 2000 --old-items 300``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import markdown_table, peak_rss_mb, reset_peak_rss, row

__all__ = ["main", "predict_rows", "threshold_by_sklearn_calls", "threshold_rows"]

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path(__file__).resolve().parent / "out"
DISTINCT_IMAGES = 64



# ------------------------------------------------------------------------------------------ threshold
def threshold_by_sklearn_calls(prob_positive: np.ndarray, labels: np.ndarray) -> float:
    """The former ``choose_threshold``: one ``balanced_accuracy_score`` call per candidate (O(n^2))."""
    from sklearn.metrics import balanced_accuracy_score

    p = np.asarray(prob_positive, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    u = np.unique(p)
    candidates = np.unique(np.concatenate([(u[:-1] + u[1:]) / 2, [0.5]]))
    best_t, best_score = 0.5, -1.0
    for t in candidates:
        score = balanced_accuracy_score(y, (p >= t).astype(int))
        if score > best_score + 1e-12 or (abs(score - best_score) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_score = float(t), score
    return best_t


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A validation split's P(class 1) (float32 round-off, so some scores tie) and its 0/1 labels."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y - 0.8)))
    return p.astype(np.float32).astype(np.float64), y


def threshold_rows(items: int = 150_000, old_items: int = 8_000, seed: int = 0) -> list[dict[str, Any]]:
    """The threshold at ``items`` validation items by sorting, and the former loop at ``old_items``
    (measured) and at ``items`` (extrapolated as ``n^2``).

    Returns:
        Three rows; the first's note says whether the two implementations agree at ``old_items``.
    """
    from lilaw_med.training.evaluation import choose_threshold

    p, y = _scores(items, seed)
    reset_peak_rss()
    start = time.perf_counter()
    t_new = choose_threshold(p, y)
    new_s = time.perf_counter() - start
    new_peak = peak_rss_mb()
    p_old, y_old = _scores(old_items, seed + 1)
    reset_peak_rss()
    start = time.perf_counter()
    t_old = threshold_by_sklearn_calls(p_old, y_old)
    old_s = time.perf_counter() - start
    old_peak = peak_rss_mb()
    same = choose_threshold(p_old, y_old) == t_old
    return [
        row("threshold, by sorting", items, new_s, new_peak,
             f"threshold {t_new:.6f}; equal to the former loop at {old_items}: {'yes' if same else 'NO'}"),
        row("threshold, one sklearn call per score (former)", old_items, old_s, old_peak, "measured"),
        row("threshold, one sklearn call per score (former)", items, old_s * (items / old_items) ** 2, None,
             f"extrapolated as n^2 from {old_items} items"),
    ]


# ------------------------------------------------------------------------------------------ predict
def _write_pngs(folder: Path, n: int, px: int, seed: int = 0) -> list[Path]:
    """``n`` grey PNGs of ``px`` x ``px``: :data:`DISTINCT_IMAGES` smooth images with noise, the others
    hard links to them (a copy where links are not supported)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, px, dtype=np.float32)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:06d}.png"
        paths.append(path)
        if path.exists():
            continue
        if i < DISTINCT_IMAGES:
            phase = rng.uniform(0, 2 * np.pi)
            img = 120 + 60 * np.sin(6 * grid[:, None] + phase) * np.cos(4 * grid[None, :]) + rng.normal(0, 8, (px, px))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        else:
            source = paths[i % DISTINCT_IMAGES]
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
    return paths


def _train_run(root: Path, network: str | None) -> Path:
    """A radiology_2d run trained one epoch on 32 small PNGs (the model predict loads)."""
    import importlib.resources

    from PIL import Image

    from lilaw_med.cli import main as cli

    run = root / "run"
    if (run / "summary.json").is_file():
        return run
    data = root / "train_data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    items = []
    for i in range(32):
        img = rng.integers(0, 80, (64, 64), dtype=np.uint8)
        if i % 2:
            img[16:48, 16:48] += 120
        path = data / f"train_{i:02d}.png"
        Image.fromarray(img).save(path)
        items.append({"image": str(path), "label": i % 2})
    datalist = data / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:24], "validation": items[24:]}))
    config = importlib.resources.files("lilaw_med.configs").joinpath("radiology_2d.yaml")
    overrides = [f"data.datalist={datalist}", "data.cache=none", "train.epochs=1", "train.batch_size=8",
                 "train.progress=false", "train.device=cpu", "output.plots=false", "output.tensorboard=false"]
    if network:
        overrides.append(f"model.network={network}")
    args = ["train", "--config", str(config), "-o", str(run)]
    for s in overrides:
        args += ["--set", s]
    if cli(args) != 0:
        raise RuntimeError("training the benchmark's run failed")
    return run


def _predict_child(run: str, listing: str, output: str, workers: int, batch_size: int) -> dict[str, float]:
    """One ``predict`` in THIS process (a child of :func:`predict_rows`): seconds and peak RSS."""
    from lilaw_med.workflows.predict import collect_inputs, predict_inputs

    inputs = collect_inputs(list_file=listing)
    reset_peak_rss()
    start = time.perf_counter()
    result = predict_inputs(run, inputs, output, batch_size=batch_size, num_workers=workers, device="cpu")
    seconds = time.perf_counter() - start
    # the loader workers' largest peak (they are waited for when the loader ends; a forked worker's
    # ru_maxrss starts at its parent's RSS at the fork)
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "workers_peak_rss_mb": workers_mb,
            "failed": len(result["failed"])}


def predict_rows(
    items: int = 20_000, px: int = 1024, root: Path | None = None, workers: int | None = None, batch_size: int = 32,
    network: str | None = None,
) -> list[dict[str, Any]]:
    """``predict`` over ``items // 4``, ``items // 2`` and ``items`` PNG files, each count in a fresh process.

    Args:
        items: the largest number of files.
        px: the side of the PNGs.
        root: where the files, the run and the outputs go (default ``benchmarks/out/scale_predict``).
        workers: loader workers (default: predict's own default).
        batch_size: predict's batch size.
        network: the run's network (default: the preset's, ``small_cnn``).

    Returns:
        One row per count; the peak RSS is the predicting process's (network, batches, rows), the
        loader workers' largest peak is in the note.
    """
    from lilaw_med.workflows.predict.images import auto_num_workers

    root = root or OUT_DIR / "scale_predict"
    paths = _write_pngs(root / f"png_{px}", items, px)
    run = _train_run(root, network)
    workers = auto_num_workers() if workers is None else workers
    rows = []
    for count in sorted({max(1, items // 4), max(1, items // 2), items}):
        listing = root / f"inputs_{count}.txt"
        listing.write_text("\n".join(str(p) for p in paths[:count]) + "\n")
        output = root / f"preds_{count}.csv"
        cmd = [sys.executable, "-m", "benchmarks.scale_predict", "--child-predict", str(run), str(listing),
               str(output), str(workers), str(batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"predict over {count} files failed: {proc.stderr.strip()[-2000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        note = (f"{px} px PNG, {workers} worker(s) (largest worker peak {child['workers_peak_rss_mb']:.0f} MB), "
                f"batch {batch_size}; {child['failed']} failed")
        rows.append(row("predict", count, child["seconds"], child["peak_rss_mb"], note))
    return rows


# ------------------------------------------------------------------------------------------ report
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.scale_predict``: prints the table and writes ``benchmarks/out/scale_predict.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="files for predict (largest count)")
    parser.add_argument("--px", type=int, default=1024, help="side of the PNGs")
    parser.add_argument("--threshold-items", type=int, default=150_000, help="validation items for the threshold")
    parser.add_argument("--old-items", type=int, default=8_000, help="items for the former threshold loop")
    parser.add_argument("--workers", type=int, default=None, help="predict's loader workers (default: its own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--network", default=None, help="the run's network (default small_cnn)")
    parser.add_argument("--root", type=Path, default=None, help="working folder (default benchmarks/out/scale_predict)")
    parser.add_argument("--child-predict", nargs=5, metavar=("RUN", "LIST", "OUT", "WORKERS", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_predict:
        run, listing, output, workers, batch = args.child_predict
        print(json.dumps(_predict_child(run, listing, output, int(workers), int(batch))))
        return 0
    rows = threshold_rows(args.threshold_items, args.old_items)
    rows += predict_rows(args.items, args.px, args.root, args.workers, args.batch_size, args.network)
    print(markdown_table(rows))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "scale_predict.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
