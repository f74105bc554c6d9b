"""Loading speed on CPU: the presets' chains against plain MONAI, the loader against the step, and
the kernel's share of a 3D training step, on the generated sample data.

Three tables (``--tables``, default all):

``chains``: the preset chain (``build_transforms(preset)`` at the preset's default options, e.g.
  224^2 and 96^3) against a plain MONAI chain on the same files at the same size
  (``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityd``, ``Resized``), 2D DICOM and 3D
  NIfTI, side by side: items/s and the user and system CPU per item (``getrusage``). Repetitions
  alternate between the chains (the machine may be shared); medians. Both run with the ``malloc``
  settings the ``lilaw-med`` command applies (:func:`lilaw_med.allocator.tune_malloc`).

``readers``: the loader alone, ``LoadMedicalImaged`` (the presets' first step: format, size and
  file-type checks, MONOCHROME1, ...) against MONAI's ``LoadImaged`` + ``EnsureChannelFirstd`` on
  the same files (2D DICOM, 3D NIfTI): user + system CPU ms per item, medians of alternating
  repetitions (CPU time, not wall time, so that a shared machine's load moves the figures less).

``step``: the system-time share of a 3D training step (``small_cnn``, forward + backward + Adam),
  each setting in its own child process: glibc's default ``malloc`` against
  :func:`lilaw_med.allocator.tune_malloc` (what ``lilaw-med`` applies), with minor page faults
  per step.

``keepup``: does the data loader keep up with the training step? For each preset, on the sample
  data:

* loader images/s: iterating a ``DataLoader`` over the training items through the preset's
  transforms (no cache: every file read and decoded each epoch; memory cache: the second epoch
  of a ``CacheDataset``, i.e. after the cache is filled), in the main process (``num_workers=0``);
* training images/s: forward + backward + SGD step of the config's CPU network
  (``small_cnn``) on batches of the same size, without LiLAW's meta step (which adds a
  validation forward/backward per batch, so the real step is slower and easier to keep up with).

Usage::

    python -m benchmarks.loading [--sample-dir DIR] [--tables chains,readers,step,keepup] [--items N]
        [--reps 3] [--step-size 64] [--step-batch 2] [--steps 5] [--threads 1] [--batch-size 16]

A quick look (under a minute on 2 cores): ``--tables chains,step --items 8 --reps 1 --steps 3``.
"keeps up" is loader images/s >= training images/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.dataset import build_dataset
from lilaw_med.data.readers import LoadMedicalImaged
from lilaw_med.data.sample import write_sample_data
from lilaw_med.data.transforms import build_transforms, preset_defaults

CASES = (
    # (sample key, preset, options, spatial dims, channels)
    ("radiology_2d", "radiology_2d", {"spatial_size": [64, 64]}, 2, 1),
    ("pathology", "pathology", {"spatial_size": [64, 64]}, 2, 3),
    ("slide", "pathology", {"spatial_size": [64, 64]}, 2, 3),
    ("radiology_3d", "radiology_3d", {"spatial_size": [32, 32, 32]}, 3, 1),
)


def _network(dims: int, channels: int, classes: int) -> torch.nn.Module:
    try:
        from lilaw_med.networks import build_network

        return build_network("small_cnn", dims, channels, classes)
    except ImportError:  # the training package is not there: a comparable small CNN
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        pool = torch.nn.AdaptiveAvgPool3d if dims == 3 else torch.nn.AdaptiveAvgPool2d
        return torch.nn.Sequential(
            conv(channels, 16, 3, padding=1),
            torch.nn.ReLU(),
            conv(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            conv(32, 64, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            pool(1),
            torch.nn.Flatten(),
            torch.nn.Linear(64, classes),
        )


def _loader_rate(dataset: object, batch_size: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    rate = 0.0
    for _ in range(epochs):  # the last epoch counts (a memory cache is full by then)
        n, start = 0, time.perf_counter()
        for batch in loader:
            n += len(batch["label"])
        rate = n / (time.perf_counter() - start)
    return rate


def _train_rate(batches: list[dict], net: torch.nn.Module, repeats: int = 3) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    n, start = 0, time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            opt.zero_grad()
            loss_fn(net(b["image"]), b["label"]).backward()
            opt.step()
            n += len(b["label"])
    return n / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------ chains
def plain_chain(spatial_size: Sequence[int]) -> Compose:
    """The plain MONAI chain the presets are compared with (no orientation, min-max scaling)."""
    return Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            ScaleIntensityd("image", minv=0.0, maxv=1.0),
            Resized("image", spatial_size=list(spatial_size), mode="area"),
        ]
    )


def _cpu() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime


def _chain_rate(chain: Callable[[dict], Any], items: list[dict]) -> tuple[float, float, float]:
    """(items/s, user ms/item, system ms/item) of one pass over ``items``."""
    chain(dict(items[0]))  # warm-up: imports, reader selection
    t0, u0, s0 = _cpu()
    for it in items:
        chain(dict(it))
    t1, u1, s1 = _cpu()
    n = len(items)
    return n / (t1 - t0), 1e3 * (u1 - u0) / n, 1e3 * (s1 - s0) / n


def chains_table(paths: dict[str, Path], items_limit: int | None, reps: int) -> None:
    """Prints the preset chain against the plain MONAI chain, 2D and 3D, at the presets' default sizes."""
    header = f"{'data':22s} {'size':>9s} {'items':>5s} {'chain':>7s} {'items/s':>8s} {'user ms':>8s} {'sys ms':>7s}"
    print("\npreset chain vs plain MONAI chain (per item; medians of alternating repetitions)\n")
    print(header)
    print("-" * len(header))
    for key, preset, what in (("radiology_2d", "radiology_2d", "radiology_2d (DICOM)"),
                              ("radiology_3d", "radiology_3d", "radiology_3d (NIfTI)")):
        items = [{"image": it["image"], "label": it["label"], "id": it["id"]} for it in load_datalist(paths[key]).training]
        items = items[:items_limit] if items_limit else items
        size = preset_defaults(preset)["spatial_size"]
        chains = {"preset": build_transforms(preset, {}, train=False), "monai": plain_chain(size)}
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in chains}
        for _ in range(reps):
            for name, chain in chains.items():
                results[name].append(_chain_rate(chain, items))
        for name, runs in results.items():
            rate, user, system = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{what:22s} {'x'.join(map(str, size)):>9s} {len(items):5d} {name:>7s} {rate:8.1f} "
                  f"{user:8.1f} {system:7.1f}")


def readers_table(paths: dict[str, Path], items_limit: int | None, reps: int) -> None:
    """Prints the presets' loader against MONAI's plain loader, CPU ms per item, 2D DICOM and 3D NIfTI."""
    header = f"{'data':22s} {'items':>5s} {'loader':>18s} {'cpu ms':>7s} {'min ms':>7s}"
    print("\nloader alone: LoadMedicalImaged vs LoadImaged + EnsureChannelFirstd (user + system CPU per item)\n")
    print(header)
    print("-" * len(header))
    for key, what in (("radiology_2d", "radiology_2d (DICOM)"), ("radiology_3d", "radiology_3d (NIfTI)")):
        items = [{"image": it["image"]} for it in load_datalist(paths[key]).training]
        items = items[:items_limit] if items_limit else items
        loaders = {
            "LoadMedicalImaged": LoadMedicalImaged("image"),
            "monai LoadImaged": Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]),
        }
        cpu: dict[str, list[float]] = {k: [] for k in loaders}
        for _ in range(max(reps, 1) * 5):  # a pass takes milliseconds: more of them for a steadier median
            for name, loader in loaders.items():
                _, user, system = _chain_rate(loader, items)
                cpu[name].append(user + system)
        for name, runs in cpu.items():
            print(f"{what:22s} {len(items):5d} {name:>18s} {statistics.median(runs):7.2f} {min(runs):7.2f}")


# ------------------------------------------------------------------------------------ 3D step
def step_child(mode: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """Runs in a child process: ``steps`` 3D training steps; returns CPU times and page faults."""
    if mode == "tuned":
        from lilaw_med.allocator import tune_malloc

        tune_malloc(environ={})
    torch.set_num_threads(1)
    net = _network(3, 1, 2)
    x, y = torch.randn(batch, 1, size, size, size), torch.randint(0, 2, (batch,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
            "faults": (r1.ru_minflt - r0.ru_minflt) / steps}


def step_table(size: int, batch: int, steps: int) -> None:
    """Prints the system-time share of a 3D step with glibc's default malloc and with lilaw-med's settings."""
    act = batch * 16 * size**3 * 4 / 2**20  # small_cnn's first activation: 16 channels, float32
    header = f"{'malloc':8s} {'user s/step':>11s} {'sys s/step':>10s} {'sys share':>9s} {'faults/step':>11s}"
    print(f"\n3D step, small_cnn {size}^3 batch {batch} (first activation {act:.0f} MiB), {steps} steps, 1 thread\n")
    print(header)
    print("-" * len(header))
    for mode in ("default", "tuned"):
        cmd = [sys.executable, "-m", "benchmarks.loading", "--step-child", mode, "--step-size", str(size),
               "--step-batch", str(batch), "--steps", str(steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        share = 100 * r["sys"] / max(r["user"] + r["sys"], 1e-9)
        print(f"{mode:8s} {r['user'] / steps:11.2f} {r['sys'] / steps:10.3f} {share:8.1f}% {r['faults']:11.0f}")


# ------------------------------------------------------------------------------------ keep up
def keepup_table(paths: dict[str, Path], batch_size: int, threads: int, items_limit: int | None) -> None:
    """Prints loader images/s (no cache, memory cache) against training images/s, per preset."""
    header = f"{'data':13s} {'preset':13s} {'size':>9s} {'items':>5s} {'cache':>6s} {'loader img/s':>12s} {'train img/s':>11s}  keeps up"
    print(f"\nCPU threads: {threads}, batch size {batch_size}, num_workers 0\n")
    print(header)
    print("-" * len(header))
    for key, preset, options, dims, channels in CASES:
        dl = load_datalist(paths[key])
        items = dl.training[:items_limit] if items_limit else dl.training
        transforms = build_transforms(preset, options, train=True)
        net = _network(dims, channels, len(dl.class_names or []) or dl.num_classes)
        cached = build_dataset(items, transforms, cache="memory")
        batches = list(DataLoader(cached, batch_size=batch_size, shuffle=False))
        train = _train_rate(batches, net)
        size = "x".join(str(s) for s in options["spatial_size"])
        for cache, epochs in (("none", 1), ("memory", 2)):
            dataset = cached if cache == "memory" else build_dataset(items, transforms, cache="none")
            rate = _loader_rate(dataset, batch_size, epochs)
            print(
                f"{key:13s} {preset:13s} {size:>9s} {len(items):5d} {cache:>6s} {rate:12.0f} {train:11.0f}  "
                f"{'yes' if rate >= train else 'NO'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sample-dir", type=Path, help="generated sample data (written to a temp folder if absent)"
    )
    parser.add_argument(
        "--tables", default="chains,readers,step,keepup", help="comma-separated: chains, readers, step, keepup"
    )
    parser.add_argument("--items", type=int, help="at most this many training items per data set")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of the chains table")
    parser.add_argument("--step-size", type=int, default=64, help="side of the 3D step's input")
    parser.add_argument("--step-batch", type=int, default=2, help="batch size of the 3D step")
    parser.add_argument("--steps", type=int, default=5, help="timed 3D steps per setting")
    parser.add_argument("--step-child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.step_child:
        print(json.dumps(step_child(args.step_child, args.step_size, args.step_batch, args.steps)))
        return
    tables = {t.strip() for t in args.tables.split(",") if t.strip()}
    unknown = tables - {"chains", "readers", "step", "keepup"}
    if unknown:
        parser.error(f"unknown tables {sorted(unknown)}; valid: chains, readers, step, keepup")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tmp = None
    if tables & {"chains", "readers", "keepup"}:
        if args.sample_dir is None or not (args.sample_dir / "radiology_2d" / "datalist.json").is_file():
            tmp = tempfile.TemporaryDirectory()
            out = args.sample_dir or Path(tmp.name)
            start = time.perf_counter()
            # a small sample when --items asks for few (the generator's minimum sizes)
            n = {} if not args.items else {"n_2d": max(16, 2 * args.items), "n_3d": max(16, 2 * args.items),
                                            "n_tiles": 40, "n_slides": 3}
            paths = write_sample_data(out, **n)
            print(f"sample data written to {out} in {time.perf_counter() - start:.1f} s")
        else:
            paths = {
                k: args.sample_dir / k / "datalist.json"
                for k in ("radiology_2d", "radiology_3d", "pathology", "slide")
            }
    if "chains" in tables:
        from lilaw_med.allocator import tune_malloc

        # the malloc settings of the lilaw-med command, for both chains alike (this process is not the CLI)
        tune_malloc(environ={})
        chains_table(paths, args.items, args.reps)
    if "readers" in tables:
        readers_table(paths, args.items, args.reps)
    if "step" in tables:
        step_table(args.step_size, args.step_batch, args.steps)
    if "keepup" in tables:
        keepup_table(paths, args.batch_size, args.threads, args.items)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
