"""Step cost against peers: plain, LiLAW, naive LiLAW and a Meta-Weight-Net-style second-order step.

Issue 7, item 2. Methods, each on MONAI's ``SupervisedTrainer`` with the same network and batches:

* ``plain``: cross-entropy;
* ``lilaw``: :class:`lilaw_med.LiLAWLoss` + :class:`lilaw_med.LiLAWHandler` (no-grad validation forward);
* ``naive``: LiLAW with the prototype's meta step, backpropagating through the network
  (:class:`benchmarks.overhead.NaiveMetaStep`);
* ``mwn``: a minimal Meta-Weight-Net step (Shu et al., NeurIPS 2019), :class:`MetaWeightNetStep`:
  per-sample losses -> weights from a 1-100-1 MLP; a one-step look-ahead of the network
  (``theta' = theta - lr * grad``, kept differentiable with ``create_graph=True``, evaluated with
  ``torch.func.functional_call``); the clean-validation loss at ``theta'`` is backpropagated
  (second order) to the MLP, which takes an Adam step; then the real network step with the
  updated weights. It is here for cost contrast only.

Sizes: 2D ResNet-18 (standard ImageNet stem) at 28 and 64 px, batch 64; a 3D ResNet-18 at 32^3,
batch 8. Per epoch (``DataLoader``, loading included) and per iteration (in-memory batches),
interleaved repetitions, medians of the process's CPU time (the machine is shared; see
:mod:`benchmarks.overhead`). Peak resident memory per method: each
(method, size) runs in its own child process (CPU peak RSS only grows within a process):
the peak resident memory (``VmHWM``; ``ru_maxrss`` elsewhere, but Linux carries ``ru_maxrss`` over
from the parent), and the training's own peak: the peak is reset to the current RSS just before
the first iteration (``/proc/self/clear_refs``), so it is measured above imports, network and data.

Run::

    nice -n 10 python -m benchmarks.cost --reps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import resnet18
from torch import nn
from torch.func import functional_call

from benchmarks.overhead import _make_trainer, _Synthetic, build_resnet18, cycle_batches, measure
from lilaw_med.utils import atomic_write

__all__ = ["SIZES", "MetaWeightNetStep", "main", "make_mwn_trainer"]

OUT_DIR = Path(__file__).resolve().parent / "out"
METHODS = ("plain", "lilaw", "naive", "mwn")
# (label, px, spatial_dims, batch size)
SIZES: tuple[tuple[str, int, int, int], ...] = (("2D 28 px", 28, 2, 64), ("2D 64 px", 64, 2, 64), ("3D 32^3", 32, 3, 8))


class MetaWeightNetStep:
    """One Meta-Weight-Net iteration (Shu et al. 2019) as a ``SupervisedTrainer`` ``iteration_update``.

    Args:
        val_loader: iterable of (meta/clean) validation batches, cycled.
        inner_lr: learning rate of the look-ahead step (the network's nominal lr).
        meta_lr: Adam learning rate of the weighting MLP (paper: 1e-3).
        hidden: hidden width of the weighting MLP (paper 100).
    """

    def __init__(self, val_loader: Iterable, inner_lr: float = 1e-3, meta_lr: float = 1e-3, hidden: int = 100) -> None:
        self.val_loader = val_loader
        self.inner_lr = inner_lr
        self.vnet = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
        self.meta_opt = torch.optim.Adam(self.vnet.parameters(), lr=meta_lr, weight_decay=1e-4)
        self.ce = nn.CrossEntropyLoss(reduction="none")
        self._batches = cycle_batches(val_loader)


    def __call__(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three phases: look-ahead, meta update of the MLP, real network step."""
        x, y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        vx, vy = engine.prepare_batch(next(self._batches), engine.state.device, engine.non_blocking)[:2]
        net = engine.network
        net.train()
        params = dict(net.named_parameters())
        # 1. look-ahead with differentiable weights
        losses = self.ce(functional_call(net, params, (x,)), y)
        v = self.vnet(losses.detach().unsqueeze(1)).squeeze(1)
        weighted = (v * losses).mean()
        grads = torch.autograd.grad(weighted, list(params.values()), create_graph=True)
        fast = {k: p - self.inner_lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        # 2. meta step on the MLP: validation loss at the look-ahead parameters, second order
        val_loss = self.ce(functional_call(net, fast, (vx,)), vy).mean()
        self.meta_opt.zero_grad(set_to_none=True)
        val_loss.backward(inputs=list(self.vnet.parameters()))
        self.meta_opt.step()
        # 3. the real step with the updated weights
        engine.optimizer.zero_grad(set_to_none=True)
        pred = net(x)
        losses = self.ce(pred, y)
        with torch.no_grad():
            v = self.vnet(losses.detach().unsqueeze(1)).squeeze(1)
            v = v / v.sum().clamp_min(1e-8)
        loss = (v * losses).sum()
        loss.backward()
        engine.optimizer.step()
        return {"image": x, "label": y, "pred": pred.detach(), "loss": loss.detach()}


def make_mwn_trainer(network: nn.Module, train_data: Iterable, val_data: Iterable) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` whose iteration is :class:`MetaWeightNetStep` (Adam 1e-3 on the network)."""
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, weight_decay=1e-4)
    step = MetaWeightNetStep(val_data, inner_lr=1e-3)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=train_data, network=network,
                             optimizer=optimizer, loss_function=nn.CrossEntropyLoss(), iteration_update=step,
                             decollate=False)


def _network(in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    if spatial_dims == 2:
        return build_resnet18(in_channels, num_classes, 2)
    return resnet18(spatial_dims=3, n_input_channels=in_channels, num_classes=num_classes, conv1_t_stride=2)


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Resets this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak RSS of this process: ``VmHWM`` on Linux (per address space: unlike ``ru_maxrss``, which Linux
    carries over from the parent across fork and exec, it starts afresh in the child), else ``ru_maxrss``."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def child(method: str, px: int, spatial_dims: int, batch_size: int, iterations: int) -> dict[str, float]:
    """Runs ``iterations`` in-memory training iterations of one method in THIS process; returns peak RSS.

    Returns:
        ``{"rss_setup_peak_mb", "rss_before_mb", "rss_peak_mb", "train_peak_mb", "iter_s"}``: peak RSS of the
        setup (imports, network, data), RSS just before training, peak RSS overall, the training's peak
        above the RSS before it (Linux), seconds per iteration.
    """
    torch.set_num_threads(1)
    shape = (1,) + (px,) * spatial_dims
    n = batch_size * iterations
    train = list(torch.utils.data.DataLoader(_Synthetic(n, shape, 2, 1), batch_size=batch_size))
    val = list(torch.utils.data.DataLoader(_Synthetic(n, shape, 2, 2), batch_size=batch_size))
    torch.manual_seed(0)
    net = _network(1, 2, spatial_dims)
    trainer = make_mwn_trainer(net, train, val) if method == "mwn" else _make_trainer(method, net, train, val)
    setup_peak = _peak_mb()
    before = _proc_status_mb("VmRSS") or setup_peak
    reset = _reset_peak()  # so that the peak below is the training's, not the setup's
    start = time.perf_counter()
    trainer.run()
    seconds = (time.perf_counter() - start) / iterations
    peak = _peak_mb()
    return {"rss_setup_peak_mb": setup_peak, "rss_before_mb": before, "rss_peak_mb": max(peak, setup_peak),
            "train_peak_mb": peak - before if reset else float("nan"), "iter_s": seconds}


def peak_memory(methods: Sequence[str], sizes: Sequence[tuple[str, int, int, int]], iterations: int = 3) -> dict[str, Any]:
    """Peak RSS of each (size, method), each in a fresh child process.

    Returns:
        ``{size label: {method: child(...) result}}``.
    """
    out: dict[str, Any] = {}
    for label, px, dims, bs in sizes:
        out[label] = {}
        for m in methods:
            cmd = [sys.executable, "-m", "benchmarks.cost", "--child", m, str(px), str(dims), str(bs), str(iterations)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
            if proc.returncode != 0:
                out[label][m] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            out[label][m] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def format_tables(timing: Sequence[dict[str, Any]], memory: dict[str, Any]) -> str:
    """Markdown: per size and method, s/epoch, s/iteration, ratios to plain, peak memory."""
    lines = [
        "| size | batch | method | CPU s / epoch (loader) | epoch ratio | CPU s / iteration (in memory) | iteration ratio | peak RSS MB | training peak over setup MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timing:
        label = r["label"]
        for m in r["epoch_s"]:
            mem = memory.get(label, {}).get(m, {})
            lines.append(
                f"| {label} | {r['batch_size']} | {m} | {r['epoch_s'][m]:.2f} | {r['epoch_ratio'][m]:.2f} | "
                f"{r['iter_s'][m]:.3f} | {r['iter_ratio'][m]:.2f} | {mem.get('rss_peak_mb', float('nan')):.0f} | "
                f"{mem.get('train_peak_mb', float('nan')):.0f} |"
            )
    return "\n".join(lines)


def main(reps: int = 3, iterations: int = 4, sizes: Sequence[tuple[str, int, int, int]] = SIZES,
         out_dir: Path = OUT_DIR) -> dict[str, Any]:
    """Times every method at every size, measures peak memory, writes ``cost.json``/``.md``.

    Returns:
        ``{"timing": [...], "memory": {...}, "markdown": str}``.
    """
    timing = []
    for label, px, dims, bs in sizes:
        r = measure(px, batch_size=bs, iterations=iterations, reps=reps, methods=METHODS, spatial_dims=dims,
                    network_fn=_network, extra_trainers={"mwn": make_mwn_trainer})
        r["label"] = label
        timing.append(r)
        print(label, {m: round(v, 2) for m, v in r["iter_ratio"].items()}, flush=True)
    memory = peak_memory(METHODS, sizes)
    report = {"timing": timing, "memory": memory, "markdown": format_tables(timing, memory)}
    atomic_write(out_dir / "cost.json", json.dumps(report, indent=1))
    atomic_write(out_dir / "cost.md", report["markdown"] + "\n")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--child", nargs=5, metavar=("METHOD", "PX", "DIMS", "BATCH", "ITERS"), default=None,
                   help="internal: run one method in this process and print its peak memory as JSON")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    a = p.parse_args()
    if a.child:
        m, px, dims, bs, iters = a.child
        print(json.dumps(child(m, int(px), int(dims), int(bs), int(iters))))
    else:
        print(main(a.reps, a.iterations, out_dir=a.out)["markdown"])
