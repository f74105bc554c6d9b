"""Seconds per epoch and per iteration: plain SupervisedTrainer vs LiLAW vs a naive LiLAW meta step.

Issue 2's cost evidence. In one process, with the same network, data and batch sizes:

* ``plain``: MONAI ``SupervisedTrainer`` with ``nn.CrossEntropyLoss``;
* ``lilaw``: the same trainer with :class:`lilaw_med.LiLAWLoss` and :class:`lilaw_med.LiLAWHandler`
  (one no-grad validation forward + a backward through the weight formula only);
* ``naive``: the paper prototype's meta step (:class:`NaiveMetaStep`): the validation batch is
  forwarded WITH gradient tracking, the meta loss is backpropagated through the whole network,
  only alpha/beta/delta are stepped and the network gradients are thrown away.

Two measurements per method: seconds per epoch through a ``DataLoader`` (collation of the training
batches, and for LiLAW of the validation batches, counted), and seconds per iteration on
pre-collated in-memory batches. The validation batch size equals the training batch size. The
network is MONAI's 2D ResNet-18 with the standard ImageNet stem (7x7 stride-2 convolution and
max-pool, 11.2 M parameters), one input channel, two classes, one thread. Repetitions of the
methods are interleaved (plain, lilaw, naive, plain, ...) and the medians are reported, since
the CPU is shared with other jobs; ratios are per repetition, then the median. The clock is the
process's CPU time (``time.process_time``: one thread, loading in the main process, so it counts
exactly this training's work and not the time other jobs hold the CPU); wall-clock ratios are
kept beside them (``wall_*``) and agree on an idle machine.

Floor (issue 2): LiLAW / plain <= 1.4 per epoch at 64 px.

Run::

    nice -n 10 python -m benchmarks.overhead --sizes 64 28 --reps 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import resnet18
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lilaw_med import LiLAWHandler, LiLAWLoss
from lilaw_med.utils import atomic_write

__all__ = ["METHODS", "NaiveMetaStep", "build_resnet18", "main", "measure"]

OUT_DIR = Path(__file__).resolve().parent / "out"
METHODS = ("plain", "lilaw", "naive")



def cycle_batches(loader: Iterable) -> Iterator:
    """The loader's batches, pass after pass (a new iterator, so a new shuffle, on every pass)."""
    while True:
        yield from loader

class NaiveMetaStep:
    """The paper prototype's meta step, for cost comparison only: backpropagates through the network.

    After every training iteration: forward one validation batch with gradient tracking, compute
    the LiLAW meta loss (the weighted mean with alpha, beta, delta live), ``backward()`` through the
    network and the weight formula, step alpha/beta/delta by ``-lr * (grad + wd * theta)``, clamp, and
    zero the network gradients. The scalar update equals :class:`lilaw_med.LiLAWHandler`'s; only
    the cost differs.

    Args:
        val_loader: iterable of validation batches (cycled).
        loss: the trainer's :class:`lilaw_med.LiLAWLoss`.
        lr: meta learning rate (spec 0.01).
        weight_decay: meta weight decay (spec 0.01).
        val_mode: ``"eval"`` or ``"train"`` network mode for the validation forward.
    """

    def __init__(self, val_loader: Iterable, loss: LiLAWLoss, lr: float = 0.01, weight_decay: float = 0.01,
                 val_mode: str = "eval") -> None:
        self.val_loader = val_loader
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_mode = val_mode
        self._batches = cycle_batches(val_loader)

    def attach(self, engine: SupervisedTrainer) -> None:
        """Registers the step on ``ITERATION_COMPLETED`` and the epoch bookkeeping of the loss."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.loss.set_epoch(e.state.epoch))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)


    def __call__(self, engine: SupervisedTrainer) -> None:
        """One naive meta step (see the class docstring)."""
        inputs, targets = engine.prepare_batch(next(self._batches), engine.state.device, engine.non_blocking)[:2]
        net = engine.network
        was_training = net.training
        net.train(self.val_mode == "train")
        try:
            pred = engine.inferer(inputs, net)  # WITH gradient tracking: the prototype's cost
        finally:
            net.train(was_training)
        w = self.loss.weighting
        params = (w.alpha, w.beta, w.delta)
        for p in params:
            p.grad = None
        meta = (w(pred, targets).weight * self.loss.per_sample_loss(pred, targets)).mean()
        meta.backward()  # through the whole network
        with torch.no_grad():
            for p in params:
                p.sub_(self.lr * (p.grad + self.weight_decay * p))
            w.clamp_()
        engine.optimizer.zero_grad(set_to_none=True)  # the network gradients are thrown away


def build_resnet18(in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 2) -> nn.Module:
    """MONAI ResNet-18 with the standard ImageNet stem (7x7/2 convolution + max-pool), 11.2 M parameters."""
    return resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                    conv1_t_stride=2)


class _Synthetic(Dataset):
    """Items ``{"image": (C, *spatial) float32, "label": int64}`` from uint8 arrays (loading = conversion + collation)."""

    def __init__(self, n: int, shape: Sequence[int], num_classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i].float().div_(255.0), "label": self.labels[i]}


def _make_trainer(method: str, network: nn.Module, train_data: Iterable, val_data: Iterable) -> SupervisedTrainer:
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=1e-4)
    # one epoch is measured: no warm-up, so the meta step runs in it
    loss: nn.Module = (nn.CrossEntropyLoss() if method == "plain"
                       else LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0))
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=train_data,
                                network=network, optimizer=optimizer, loss_function=loss, decollate=False)
    if method == "lilaw":
        LiLAWHandler(val_data, loss).attach(trainer)
    elif method == "naive":
        NaiveMetaStep(val_data, loss).attach(trainer)
    return trainer


def _timed_run(trainer: SupervisedTrainer) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one ``run()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.run()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(
    px: int,
    batch_size: int = 64,
    iterations: int = 6,
    reps: int = 5,
    methods: Sequence[str] = METHODS,
    spatial_dims: int = 2,
    network_fn: Any = build_resnet18,
    extra_trainers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Times ``methods`` at one image size, interleaved, and returns medians and ratios to plain.

    Args:
        px: image side (2D) or cube side (3D).
        batch_size: training and validation batch size.
        iterations: training iterations per timed epoch.
        reps: interleaved repetitions (one warm-up round is run first and discarded).
        methods: subset of :data:`METHODS` (plus keys of ``extra_trainers``); ``"plain"`` must be one.
        spatial_dims: 2 or 3.
        network_fn: ``(in_channels, num_classes, spatial_dims) -> nn.Module``.
        extra_trainers: ``{name: (network, train_data, val_data) -> engine}`` for other methods
            (e.g. the Meta-Weight-Net step of :mod:`benchmarks.cost`); their engine needs ``run()``.

    Returns:
        ``{"px", "batch_size", "iterations", "reps", "epoch_s": {m: median}, "iter_s": {m: median},
        "epoch_ratio": {m: median ratio to plain}, "iter_ratio": {...}, "raw": {...}}``.
    """
    torch.set_num_threads(1)
    shape = (1,) + (px,) * spatial_dims
    n = batch_size * iterations
    train_set, val_set = _Synthetic(n, shape, 2, seed=1), _Synthetic(n, shape, 2, seed=2)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=0)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=True, num_workers=0)
    train_mem = list(train_loader)  # pre-collated: per-iteration cost without loading
    val_mem = list(val_loader)
    extra_trainers = extra_trainers or {}
    engines: dict[tuple[str, str], Any] = {}
    for m in methods:
        for mode, (tr, va) in (("epoch", (train_loader, val_loader)), ("iter", (train_mem, val_mem))):
            torch.manual_seed(0)
            net = network_fn(1, 2, spatial_dims)
            if m in extra_trainers:
                engines[(m, mode)] = extra_trainers[m](net, tr, va)
            else:
                engines[(m, mode)] = _make_trainer(m, net, tr, va)
    raw: dict[str, dict[str, list[float]]] = {mode: {m: [] for m in methods} for mode in ("epoch", "iter")}
    raw_wall: dict[str, dict[str, list[float]]] = {mode: {m: [] for m in methods} for mode in ("epoch", "iter")}
    for rep in range(reps + 1):
        for mode, m in itertools.product(("epoch", "iter"), methods):
            cpu, wall = _timed_run(engines[(m, mode)])
            if rep > 0:  # the first round warms caches and allocators
                raw[mode][m].append(cpu)
                raw_wall[mode][m].append(wall)
    out: dict[str, Any] = {"px": px, "spatial_dims": spatial_dims, "batch_size": batch_size,
                           "iterations": iterations, "reps": reps, "clock": "process CPU time",
                           "raw": raw, "raw_wall": raw_wall}
    for mode in ("epoch", "iter"):
        div = 1 if mode == "epoch" else iterations
        for key, series in (("", raw), ("wall_", raw_wall)):
            out[f"{key}{mode}_s"] = {m: statistics.median(series[mode][m]) / div for m in methods}
            out[f"{key}{mode}_ratio"] = {
                m: statistics.median([a / b for a, b in zip(series[mode][m], series[mode]["plain"], strict=True)])
                for m in methods
            }
    return out


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`measure` results."""
    methods = list(results[0]["epoch_s"])
    lines = [
        "| size | batch | method | CPU s / epoch (loader) | ratio to plain | CPU s / iteration (in memory) | ratio to plain | wall-clock epoch ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = f"{r['px']}^{r['spatial_dims']}" if r["spatial_dims"] == 3 else f"{r['px']} px"
        for m in methods:
            lines.append(
                f"| {size} | {r['batch_size']} | {m} | {r['epoch_s'][m]:.2f} | {r['epoch_ratio'][m]:.2f} | "
                f"{r['iter_s'][m]:.3f} | {r['iter_ratio'][m]:.2f} | {r['wall_epoch_ratio'][m]:.2f} |"
            )
    return "\n".join(lines)


def main(sizes: Sequence[int] = (64, 28), batch_size: int = 64, iterations: int = 6, reps: int = 5,
         out_dir: Path = OUT_DIR) -> dict[str, Any]:
    """Runs :func:`measure` for each size, prints the table, writes ``overhead.json``/``.md``.

    Returns:
        ``{"results": [...], "markdown": str, "floor_64": {...}}``.
    """
    results = []
    for px in sizes:
        results.append(measure(px, batch_size=batch_size, iterations=iterations, reps=reps))
        print(format_table(results[-1:]), flush=True)
    report: dict[str, Any] = {"results": results, "markdown": format_table(results)}
    for r in results:
        if r["px"] == 64:
            report["floor_64"] = {"lilaw_over_plain_epoch": r["epoch_ratio"]["lilaw"],
                                  "lilaw_over_plain_iter": r["iter_ratio"]["lilaw"], "required": 1.4,
                                  "met": bool(r["epoch_ratio"]["lilaw"] <= 1.4)}
    atomic_write(out_dir / "overhead.json", json.dumps(report, indent=1))
    atomic_write(out_dir / "overhead.md", report["markdown"] + "\n")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 28])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT_DIR)
    a = p.parse_args()
    rep = main(a.sizes, a.batch_size, a.iterations, a.reps, a.out)
    print()
    print(rep["markdown"])
    if "floor_64" in rep:
        print("floor (LiLAW/plain per epoch at 64 px <= 1.4):", rep["floor_64"])
