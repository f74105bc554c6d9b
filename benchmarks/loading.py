"""Does the data loader keep up with the training step on CPU? Images/s of both, on the sample data.

For each preset it measures, on the generated sample data (``lilaw-med sample-data``):

* loader images/s: iterating a ``DataLoader`` over the training items through the preset's
  transforms (no cache: every file read and decoded each epoch; memory cache: the second epoch
  of a ``CacheDataset``, i.e. after the cache is filled), in the main process (``num_workers=0``);
* training images/s: forward + backward + SGD step of the config's CPU network
  (``small_cnn``) on batches of the same size, without LiLAW's meta step (which adds a
  validation forward/backward per batch, so the real step is slower and easier to keep up with).

Usage::

    python benchmarks/loading.py [--sample-dir DIR] [--threads 1] [--batch-size 16]

Prints a table; "keeps up" is loader images/s >= training images/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.dataset import build_dataset
from lilaw_med.data.sample import write_sample_data
from lilaw_med.data.transforms import build_transforms

CASES = (
    # (sample key, preset, options, spatial dims, channels)
    ("radiology_2d", "radiology_2d", {"spatial_size": [64, 64]}, 2, 1),
    ("pathology", "pathology", {"spatial_size": [64, 64]}, 2, 3),
    ("slide", "pathology", {"spatial_size": [64, 64]}, 2, 3),
    ("radiology_3d", "radiology_3d", {"spatial_size": [32, 32, 32]}, 3, 1),
)


def _network(dims: int, channels: int, classes: int) -> torch.nn.Module:
    try:
        from lilaw_med.training.networks import build_network

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sample-dir", type=Path, help="generated sample data (written to a temp folder if absent)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tmp = None
    if args.sample_dir is None or not (args.sample_dir / "radiology_2d" / "datalist.json").is_file():
        tmp = tempfile.TemporaryDirectory()
        out = args.sample_dir or Path(tmp.name)
        start = time.perf_counter()
        paths = write_sample_data(out)
        print(f"sample data written to {out} in {time.perf_counter() - start:.1f} s")
    else:
        paths = {
            k: args.sample_dir / k / "datalist.json"
            for k in ("radiology_2d", "radiology_3d", "pathology", "slide")
        }

    header = f"{'data':13s} {'preset':13s} {'size':>9s} {'items':>5s} {'cache':>6s} {'loader img/s':>12s} {'train img/s':>11s}  keeps up"
    print(f"\nCPU threads: {args.threads}, batch size {args.batch_size}, num_workers 0\n")
    print(header)
    print("-" * len(header))
    for key, preset, options, dims, channels in CASES:
        dl = load_datalist(paths[key])
        items = dl.training
        transforms = build_transforms(preset, options, train=True)
        net = _network(dims, channels, len(dl.class_names or []) or dl.num_classes)
        cached = build_dataset(items, transforms, cache="memory")
        batches = list(DataLoader(cached, batch_size=args.batch_size, shuffle=False))
        train = _train_rate(batches, net)
        size = "x".join(str(s) for s in options["spatial_size"])
        for cache, epochs in (("none", 1), ("memory", 2)):
            dataset = cached if cache == "memory" else build_dataset(items, transforms, cache="none")
            rate = _loader_rate(dataset, args.batch_size, epochs)
            print(
                f"{key:13s} {preset:13s} {size:>9s} {len(items):5d} {cache:>6s} {rate:12.0f} {train:11.0f}  "
                f"{'yes' if rate >= train else 'NO'}"
            )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
