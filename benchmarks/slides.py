"""Whole-slide ``predict``: peak memory, patches/s and the tissue mask against the known tissue.

Issue 15, item 2. The benchmark makes its own slides: a synthetic RGB slide of ``--size`` px
(default 20000) with H&E-coloured tissue blobs on bright glass and three marker strokes (blue,
green, black) drawn across glass and tissue, written with tifffile as a JPEG-tiled TIFF twice:
pyramidal (levels halving down to about 1000 px) and single-level. Every pixel's truth
(background, tissue, pen) is a closed-form function of its level-0 position, so the tiles are
rendered one at a time (memory: a tile) and the truth of each patch of the predict grid is known.

``lilaw-med predict`` runs on each slide in a child process (``python -m lilaw_med predict``);
its peak resident memory is the child's ``VmHWM`` (read from ``/proc`` by a wrapper at exit)
and ``ru_maxrss`` from ``os.wait4`` (Linux carries ``ru_maxrss`` over from the parent's fork,
so this process stays small: numpy and tifffile only). The model is a one-epoch
``pathology_patch`` run on the small sample data (trained once into the cache folder, or
``--run``). Printed per slide: peak RSS, patches scored, patches/s over the whole command,
the IoU of the scored patches with the patches that are at least half tissue, the share of the
pen patches (at least a quarter ink) that were rejected, and the share of glass patches rejected.

Run::

    nice -n 10 python -m benchmarks.slides              # 20k x 20k, the issue's case
    nice -n 10 python -m benchmarks.slides --size 4000  # a quick check
    python -m benchmarks.slides --montage docs/img/tissue_mask.png --size 4000   # the docs picture
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lilaw-med-slides"
TILE = 256
# glass, eosin pink, haematoxylin purple; the three inks
GLASS = np.array([238, 236, 240], np.float32)
PINK = np.array([214, 140, 186], np.float32)
PURPLE = np.array([128, 72, 160], np.float32)
INKS = {"blue": (35, 65, 175), "green": (40, 140, 70), "black": (30, 30, 35)}


class Scene:
    """The synthetic slide as functions of level-0 position (fractions of the side).

    Args:
        side: level-0 side in pixels.
        seed: seed of the blobs and strokes.
    """

    def __init__(self, side: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.side = side
        # tissue: 6 ellipses (centre y, x; radii; angle) in the slide's fractions
        self.blobs = [
            (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.18), rng.uniform(0.05, 0.12),
             rng.uniform(0, np.pi))
            for _ in range(6)
        ]
        # ink: three strokes from edge to edge, about 0.6% of the side wide (a marker at 20k px)
        self.strokes = [
            (name, np.array([rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.95)]),
             np.array([rng.uniform(0.7, 0.95), rng.uniform(0.05, 0.95)]), 0.006)
            for name in INKS
        ]

    def labels(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """0 glass, 1 tissue, 2..4 ink (blue, green, black) at level-0 rows ``ys`` x columns ``xs``."""
        y = (ys[:, None] + 0.5) / self.side
        x = (xs[None, :] + 0.5) / self.side
        out = np.zeros((len(ys), len(xs)), np.uint8)
        for cy, cx, ry, rx, a in self.blobs:
            dy, dx = y - cy, x - cx
            u, v = dy * np.cos(a) + dx * np.sin(a), -dy * np.sin(a) + dx * np.cos(a)
            out[(u / ry) ** 2 + (v / rx) ** 2 <= 1] = 1
        for k, (_, p, q, width) in enumerate(self.strokes):
            d = q - p
            t = np.clip(((y - p[0]) * d[0] + (x - p[1]) * d[1]) / (d @ d), 0, 1)
            dist = np.hypot(y - (p[0] + t * d[0]), x - (p[1] + t * d[1]))
            out[dist <= width / 2] = 2 + k
        return out

    def render(self, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(len(ys), len(xs), 3) uint8 RGB: glass, stained tissue (pink to purple) and ink, with noise."""
        lab = self.labels(ys, xs)
        y = ys[:, None] / self.side
        x = xs[None, :] / self.side
        mix = (0.5 + 0.5 * np.sin(40 * y + 3 * np.cos(30 * x)) * np.cos(25 * x))[..., None]
        img = np.broadcast_to(GLASS, lab.shape + (3,)).copy()
        tissue = (1 - mix) * PINK + mix * PURPLE
        img[lab == 1] = np.broadcast_to(tissue, lab.shape + (3,))[lab == 1]
        for k, ink in enumerate(INKS.values()):
            img[lab == 2 + k] = ink
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def write_slide(scene: Scene, path: Path, pyramid: bool) -> None:
    """A JPEG-tiled TIFF of the scene, tile by tile (pyramid levels rendered at their own scale)."""
    import tifffile

    side = scene.side

    def tiles(level_side: int, down: float):
        rng = np.random.default_rng(level_side)
        for r in range(0, level_side, TILE):
            for c in range(0, level_side, TILE):
                ys = (np.arange(r, r + TILE) * down).astype(np.int64)
                xs = (np.arange(c, c + TILE) * down).astype(np.int64)
                yield scene.render(ys, xs, rng)

    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        level_side, level = side, 0
        while True:
            tw.write(
                tiles(level_side, side / level_side), shape=(level_side, level_side, 3), dtype=np.uint8,
                tile=(TILE, TILE), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                subfiletype=1 if level else 0,
            )
            level_side, level = level_side // 2, level + 1
            if not pyramid or level_side < 1000:
                break
    tmp.replace(path)


def _truth(scene: Scene, patch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch of the predict grid: tissue share >= 0.5, ink share >= 0.25, glass share >= 0.9 (8 x 8 samples)."""
    n = scene.side // patch
    offs = (np.arange(8) + 0.5) * patch / 8
    tissue = np.zeros((n, n), bool)
    pen = np.zeros((n, n), bool)
    glass = np.zeros((n, n), bool)
    for r in range(n):
        ys = (r * patch + offs).astype(np.int64)
        xs = (np.arange(n)[:, None] * patch + offs[None, :]).reshape(-1).astype(np.int64)
        lab = scene.labels(ys, xs).reshape(8, n, 8).transpose(1, 0, 2).reshape(n, 64)
        tissue[r] = (lab == 1).mean(axis=1) >= 0.5
        pen[r] = (lab >= 2).mean(axis=1) >= 0.25
        glass[r] = (lab == 0).mean(axis=1) >= 0.9
    return tissue, pen, glass


def _train_run(cache: Path) -> Path:
    """A one-epoch pathology_patch run on the small sample data (once per cache folder)."""
    run = cache / "run"
    if (run / "summary.json").is_file():
        return run
    sample = cache / "sample"
    code = (
        "from lilaw_med.data.sample import write_sample_data; "
        f"write_sample_data({str(sample)!r}, seed=0, n_2d=8, n_3d=8, n_tiles=60, n_slides=3)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    sets = [f"data.datalist={sample / 'pathology' / 'datalist.json'}", "data.sample_data=false", "train.epochs=1",
            "train.progress=false", "train.device=cpu", "output.plots=false", "output.tensorboard=false"]
    cmd = [sys.executable, "-m", "lilaw_med", "train", "--config", str(ROOT / "configs" / "pathology_patch.yaml"),
           "-o", str(run), *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run


# the child: lilaw-med predict as the program runs it (main() reads sys.argv, so predict imports
# MONAI lean: lilaw_med.lean), then its own peak RSS (VmHWM) on the last line of stderr
_CHILD = (
    "import sys\n"
    "from lilaw_med.cli import main\n"
    "sys.argv = ['lilaw-med', *sys.argv[1:]]\n"
    "rc = main()\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
    "print('VMHWM_KB', hwm[0].split()[1] if hwm else 0, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_predict(run: Path, slide: Path, out_csv: Path) -> dict[str, float]:
    """``lilaw-med predict`` on one slide in a child; its peak memory, time and warning count."""
    cmd = [sys.executable, "-c", _CHILD, "predict", str(run), str(slide), "-o", str(out_csv), "--uncalibrated"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"predict failed ({proc.returncode}): {stderr[-2000:]}")
    hwm = [line for line in stderr.splitlines() if line.startswith("VMHWM_KB")]
    return {
        "seconds": seconds,
        "vmhwm_mb": int(hwm[-1].split()[1]) / 1024 if hwm else float("nan"),
        "maxrss_mb": usage.ru_maxrss / 1024,
        "warnings": sum("nvImageCodec" in line or "Warning" in line for line in stderr.splitlines()),
    }


def _scored(patches_csv: Path, patch: int, n: int) -> np.ndarray:
    scored = np.zeros((n, n), bool)
    with open(patches_csv, newline="") as f:
        for row in csv.DictReader(f):
            scored[int(row["y"]) // patch, int(row["x"]) // patch] = True
    return scored


def montage(scene: Scene, slide: Path, out: Path) -> None:
    """A small PNG for the docs: thumbnail, the mask's classes, the truth (side by side)."""
    from PIL import Image

    from lilaw_med.data.tissue import tissue_classes
    from lilaw_med.data.wsi import read_thumbnail
    from lilaw_med.workflows.predict.slides import mask_overlay

    thumb = read_thumbnail(slide, 320)
    classes = tissue_classes(thumb)
    idx = ((np.arange(thumb.shape[0]) + 0.5) * scene.side / thumb.shape[0]).astype(np.int64)
    truth = scene.labels(idx, ((np.arange(thumb.shape[1]) + 0.5) * scene.side / thumb.shape[1]).astype(np.int64))
    truth_rgb = np.where((truth == 1)[..., None], thumb, 40).astype(np.uint8)
    truth_rgb[truth >= 2] = (255, 230, 0)
    gap = np.full((thumb.shape[0], 6, 3), 255, np.uint8)
    picture = Image.fromarray(np.concatenate([thumb, gap, mask_overlay(thumb, classes), gap, truth_rgb], axis=1))
    picture.quantize(48).save(out, optimize=True)  # a palette PNG: a small file for the docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="level-0 side of the slides in pixels")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder of the slides and the model run")
    parser.add_argument("--run", type=Path, help="a pathology run to predict with (default: a one-epoch run)")
    parser.add_argument("--montage", type=Path, help="also write the docs montage PNG here")
    args = parser.parse_args()
    size = TILE * math.ceil(args.size / TILE)
    args.cache.mkdir(parents=True, exist_ok=True)
    scene = Scene(size)
    slides = {"pyramidal": args.cache / f"slide_{size}_pyramid.tif", "single-level": args.cache / f"slide_{size}_flat.tif"}
    for kind, path in slides.items():
        if not path.is_file():
            start = time.perf_counter()
            write_slide(scene, path, pyramid=kind == "pyramidal")
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - start:.0f} s")
    if args.montage:
        montage(scene, slides["pyramidal"], args.montage)
        print(f"wrote {args.montage}")
    run = args.run or _train_run(args.cache)
    header = (f"{'slide':13s} {'side':>6s} {'VmHWM MB':>9s} {'maxrss MB':>9s} {'patches':>7s} {'patches/s':>9s} "
              f"{'s':>6s} {'IoU':>5s} {'pen rej':>7s} {'glass rej':>9s} {'warnings':>8s}")
    print(f"\nlilaw-med predict {run} SLIDE (one child process per slide)\n")
    print(header)
    print("-" * len(header))
    truth = None
    for kind, path in slides.items():
        out_csv = args.cache / "out" / f"{path.stem}.csv"
        out_csv.parent.mkdir(exist_ok=True)
        r = run_predict(run, path, out_csv)
        patches_csv = out_csv.with_name(f"{out_csv.stem}_{path.name.split('.')[0]}_patches.csv")
        with open(patches_csv, newline="") as f:
            first = next(csv.DictReader(f), None)
        patch = int(first["width"]) if first else 64
        if truth is None:
            truth = _truth(scene, patch)
        tissue, pen, glass = truth
        scored = _scored(patches_csv, patch, size // patch)
        iou = (scored & tissue).sum() / max((scored | tissue).sum(), 1)
        pen_rej = 1 - (scored & pen).sum() / max(pen.sum(), 1)
        glass_rej = 1 - (scored & glass).sum() / max(glass.sum(), 1)
        n = int(scored.sum())
        print(f"{kind:13s} {size:6d} {r['vmhwm_mb']:9.0f} {r['maxrss_mb']:9.0f} {n:7d} {n / r['seconds']:9.1f} "
              f"{r['seconds']:6.1f} {iou:5.3f} {pen_rej:7.3f} {glass_rej:9.3f} {r['warnings']:8d}")
    print(f"\n(patch {patch} px; truth per patch: tissue >= 50%, pen >= 25% ink ({int(truth[1].sum())} patches), "
          f"glass >= 90%)")


if __name__ == "__main__":
    main()
