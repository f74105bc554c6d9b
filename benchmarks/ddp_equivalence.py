"""How close is LiLAW training on N DDP processes (per-rank batch B) to 1 process with batch N*B?

Spawns N CPU processes (gloo, 127.0.0.1) that train a tiny classifier with LiLAWLoss + LiLAWHandler
in a MONAI SupervisedTrainer (DDP-wrapped, ResumableSampler for the training and the meta-step
loaders), then trains the same network in this process with batch N*B, and prints the largest
differences in alpha/beta/delta (over every step) and in the parameters at the end, and whether
the ranks agree bit for bit. With batch norm the runs are NOT equivalent (each rank normalises
with its own batch statistics): the table shows by how much.

    python benchmarks/ddp_equivalence.py                      # N = 2, 4; float32/float64; with/without BN
    python benchmarks/ddp_equivalence.py --world-sizes 2 --epochs 5
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from ignite.engine import Events
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.losses import LiLAWLoss
from lilaw_med.training import distributed as D


def _items(n: int, seed: int, dtype: torch.dtype) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g).to(dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    x[y == 1, :4] += 1.0  # something to learn
    return [{"image": x[i], "label": y[i], "id": str(i)} for i in range(n)]


def _network(batchnorm: bool, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(1234)
    norm: list[nn.Module] = [nn.BatchNorm1d(32)] if batchnorm else []
    return nn.Sequential(nn.Linear(16, 32), *norm, nn.Tanh(), nn.Linear(32, 3)).to(dtype)


def train(opts: dict[str, Any], rank: int, world_size: int, batch: int) -> dict[str, Any]:
    """One LiLAW training on this rank's shards; returns alpha/beta/delta per step and the parameters."""
    from monai.engines import SupervisedTrainer

    torch.set_num_threads(1)
    dtype = getattr(torch, opts["dtype"])
    train_items, val_items = _items(opts["n_train"], 1, dtype), _items(opts["n_val"], 2, dtype)
    train_loader = DataLoader(
        train_items, batch_size=batch, sampler=ResumableSampler(len(train_items), seed=11, rank=rank, world_size=world_size)
    )
    val_loader = DataLoader(
        val_items, batch_size=batch, sampler=ResumableSampler(len(val_items), seed=22, rank=rank, world_size=world_size)
    )
    network = _network(opts["batchnorm"], dtype)
    if world_size > 1:
        network = D.wrap_ddp(network, D.DistributedContext(rank=rank, world_size=world_size))
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=opts["epochs"], train_data_loader=train_loader, network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-2), loss_function=loss, decollate=False,
    )  # fmt: skip
    LiLAWHandler(val_loader, loss).attach(trainer)
    scalars: list[list[float]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scalars.append(list(loss.weighting.as_dict().values())))
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    params = torch.cat([p.detach().reshape(-1).double() for p in D.unwrap_network(network).parameters()])
    return {"scalars": np.asarray(scalars), "params": params.numpy(), "seconds": seconds}


def _worker(rank: int, world_size: int, port: int, opts: dict[str, Any], out: str) -> None:
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    context = D.init_distributed(device="cpu", environ=env, timeout_s=120)
    try:
        torch.save(train(opts, rank, world_size, opts["batch"]), Path(out) / f"rank{rank}.pt")
    finally:
        D.cleanup_distributed(context)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compare(opts: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Runs N processes and 1 process; returns the differences."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world_size, _free_port(), opts, out), nprocs=world_size, start_method="fork")
        ranks = [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    single = train(opts, 0, 1, world_size * opts["batch"])
    r0 = ranks[0]
    return {
        "ranks_identical": all(
            np.array_equal(r["scalars"], r0["scalars"]) and np.array_equal(r["params"], r0["params"]) for r in ranks
        ),
        "steps": len(r0["scalars"]),
        "max_abs_diff_abd": float(np.abs(r0["scalars"] - single["scalars"]).max()),
        "max_abs_diff_params": float(np.abs(r0["params"] - single["params"]).max()),
        "seconds_n": max(r["seconds"] for r in ranks),
        "seconds_1": single["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--batch", type=int, default=4, help="per-rank batch B (training and meta step)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=96, help="a multiple of N*B keeps the runs equivalent")
    parser.add_argument("--n-val", type=int, default=32)
    args = parser.parse_args()
    print("| N | dtype | batch norm | steps | max abs diff alpha/beta/delta | max abs diff params | ranks identical | s (N procs) | s (1 proc) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for world_size in args.world_sizes:
        for dtype in args.dtypes:
            for batchnorm in (False, True):
                opts = {"dtype": dtype, "batchnorm": batchnorm, "batch": args.batch, "epochs": args.epochs,
                        "n_train": args.n_train, "n_val": args.n_val}  # fmt: skip
                r = compare(opts, world_size)
                print(
                    f"| {world_size} | {dtype} | {'yes' if batchnorm else 'no'} | {r['steps']} | "
                    f"{r['max_abs_diff_abd']:.2e} | {r['max_abs_diff_params']:.2e} | {r['ranks_identical']} | "
                    f"{r['seconds_n']:.2f} | {r['seconds_1']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
