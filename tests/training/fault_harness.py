"""Fault injection for the ``lilaw-med train`` CLI: run it in a child process, SIGKILL it at a chosen
point, resume it with ``--resume RUN_DIR``, and compare the run folder with an uninterrupted run.

The child is forked from a process that has already imported lilaw-med (seconds saved per run);
it then runs exactly what the console script runs, ``lilaw_med.cli.main(argv)``, and is killed by
a real ``SIGKILL`` sent to itself from an ignite event handler (or from inside a checkpoint write),
so nothing after the kill point runs: no ``finally``, no flush, no exit handler.

Used by tests/training/test_fault_injection.py and benchmarks/fault_injection.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.torchrun import free_port

KILL_KINDS = ("iteration", "batch", "epoch_end", "ckpt_write")
FORK_AND_PROC = sys.platform == "linux"  # run_cli forks, and the checkpoint-write kill reads /proc/self/fd


@dataclass(frozen=True)
class Kill:
    """Where to kill the training process.

    Attributes:
        kind: ``"iteration"``: after iteration ``at`` ran (handlers of ITERATION_COMPLETED before the
            checkpoint); ``"batch"``: after the batch of iteration ``at`` was loaded, before its
            model step; ``"epoch_end"``: at EPOCH_COMPLETED of epoch ``at`` (after validation, before
            the epoch checkpoint); ``"ckpt_write"``: while writing the checkpoint of iteration ``at``
            (the temporary file is written, not yet fsynced nor renamed).
        at: the iteration (or epoch) number.
    """

    kind: str
    at: int

    def install(self) -> None:
        """Arms the kill in this (child) process."""
        from ignite.engine import Events
        from monai.engines import SupervisedTrainer

        def die(*_: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        if self.kind == "ckpt_write":
            real_fsync = os.fsync
            marker = f".ckpt_{self.at:09d}.pt."

            def fsync(fd: int) -> None:
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    target = ""
                if marker in target:
                    die()
                real_fsync(fd)

            os.fsync = fsync
            return
        original_run = SupervisedTrainer.run
        kill = self

        def run(trainer: SupervisedTrainer) -> None:
            if kill.kind == "iteration":
                trainer.add_event_handler(
                    Events.ITERATION_COMPLETED, lambda e: e.state.iteration == kill.at and die()
                )
            elif kill.kind == "batch":
                trainer.add_event_handler(
                    Events.GET_BATCH_COMPLETED, lambda e: e.state.iteration + 1 == kill.at and die()
                )
            elif kill.kind == "epoch_end":
                trainer.add_event_handler(
                    Events.EPOCH_COMPLETED, lambda e: e.state.epoch == kill.at and die()
                )
            else:
                raise ValueError(f"unknown kill kind {kill.kind!r}; one of {KILL_KINDS}")
            original_run(trainer)

        SupervisedTrainer.run = run  # type: ignore[method-assign]


@dataclass(frozen=True)
class Pause:
    """Where to hold the training process still (to run another command against its live run folder).

    At ``ITERATION_COMPLETED`` of iteration ``at`` the child creates ``ready`` and waits until ``go``
    exists (at most ``timeout`` seconds), then goes on.
    """

    at: int
    ready: Path
    go: Path
    timeout: float = 120.0

    def install(self) -> None:
        """Arms the pause in this (child) process."""
        import time

        from ignite.engine import Events
        from monai.engines import SupervisedTrainer

        original_run = SupervisedTrainer.run
        pause = self

        def hold(engine: Any) -> None:
            if engine.state.iteration != pause.at:
                return
            pause.ready.touch()
            deadline = time.monotonic() + pause.timeout
            while not pause.go.exists() and time.monotonic() < deadline:
                time.sleep(0.05)

        def run(trainer: SupervisedTrainer) -> None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED, hold)
            original_run(trainer)

        SupervisedTrainer.run = run  # type: ignore[method-assign]


@dataclass(frozen=True)
class RankSeeds:
    """Gives every rank of a distributed run its own random streams: at the start of a fresh run
    (``STARTED`` at iteration 0) Python's, NumPy's and torch's generators are seeded with ``base + rank``.

    The toolkit seeds every rank alike, so rank 0's random state happens to be every rank's; with this
    hook (dropout masks then differ between ranks) only a checkpoint that keeps each rank's own random
    state resumes exactly.
    """

    base: int = 1000

    def install(self) -> None:
        """Arms the seeding in this (child) process."""
        import random

        import torch
        from ignite.engine import Events
        from monai.engines import SupervisedTrainer

        original_run = SupervisedTrainer.run
        base = self.base

        def seed(engine: Any) -> None:
            if engine.state.iteration == 0:
                rank = int(os.environ.get("RANK", "0"))
                random.seed(base + rank)
                np.random.seed(base + rank)
                torch.manual_seed(base + rank)

        def run(trainer: SupervisedTrainer) -> None:
            trainer.add_event_handler(Events.STARTED, seed)
            original_run(trainer)

        SupervisedTrainer.run = run  # type: ignore[method-assign]


@dataclass(frozen=True)
class Hooks:
    """Several hooks armed together, in order."""

    hooks: tuple[Any, ...]

    def install(self) -> None:
        """Arms every hook in this (child) process."""
        for hook in self.hooks:
            hook.install()


def start_cli(
    argv: Sequence[str],
    hook: Kill | Pause | Hooks | RankSeeds | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Starts ``lilaw_med.cli.main(argv)`` in a forked child and returns at once.

    Args:
        argv: the command line after ``lilaw-med``.
        hook: a :class:`Kill`, :class:`Pause` (or anything with ``install()``) armed in the child
            (``None``: none).
        log: where the child's stdout and stderr go (``None``: discarded).
        env: environment variables set in the child only (e.g. torchrun's ``RANK``, ``WORLD_SIZE``, ...).

    Returns:
        The child's pid (pass it to :func:`wait_cli`).
    """
    import lilaw_med.cli.audit  # noqa: F401  (every module the child needs is imported once, before the fork)
    import lilaw_med.cli.train  # noqa: F401
    import lilaw_med.training.resume  # noqa: F401
    import lilaw_med.training.run  # noqa: F401
    import lilaw_med.workflows.audit  # noqa: F401
    from lilaw_med.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller (pytest) from here
        code = 98
        try:
            fd = os.open(log if log else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            import logging

            logging.getLogger().handlers.clear()  # pytest's capture handlers belong to the parent
            if env:
                os.environ.update(env)
                import torch

                torch.set_num_threads(1)  # two ranks share the machine's cores
            if hook is not None:
                hook.install()
            code = int(main(list(argv)) or 0)
        except SystemExit as e:
            code = int(e.code) if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 99
        finally:
            os._exit(code)
    return pid


def wait_cli(pid: int) -> int:
    """Waits for a child of :func:`start_cli`.

    Returns:
        Its exit status, or ``-signal`` when it was killed by a signal.
    """
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_cli(argv: Sequence[str], kill: Kill | Pause | None = None, log: Path | None = None) -> int:
    """Runs ``lilaw_med.cli.main(argv)`` in a forked child and waits for it.

    Args:
        argv: the command line after ``lilaw-med``.
        kill: where to SIGKILL (or pause) the child (``None``: let it finish).
        log: where the child's stdout and stderr go (``None``: discarded).

    Returns:
        The exit status, or ``-signal`` when the child was killed by a signal.
    """
    return wait_cli(start_cli(argv, kill, log))



def run_cli_ranks(
    argv: Sequence[str],
    world_size: int = 2,
    hook: Any = None,
    log: Path | None = None,
    timeout: float = 180.0,
) -> list[int]:
    """Runs ``lilaw_med.cli.main(argv)`` as the ``world_size`` ranks of a CPU (gloo) process group, as
    ``torchrun --nproc_per_node world_size`` would, each rank a child forked from this process.

    Args:
        argv: the command line after ``lilaw-med`` (the same for every rank).
        world_size: the number of ranks.
        hook: armed in every rank (see :func:`start_cli`).
        log: rank ``r`` writes to ``log.rank<r>`` (``None``: discarded).
        timeout: seconds before the ranks still running are SIGKILLed.

    Returns:
        The ranks' exit statuses (``-signal`` when killed by a signal), in rank order.
    """
    import time

    port = free_port()
    pids = []
    for rank in range(world_size):
        env = {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        }  # fmt: skip
        pids.append(start_cli(argv, hook, None if log is None else log.with_name(f"{log.name}.rank{rank}"), env))
    deadline = time.monotonic() + timeout
    statuses: dict[int, int] = {}
    while len(statuses) < len(pids):
        for pid in pids:
            if pid in statuses:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if len(statuses) < len(pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    if pid not in statuses:
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
    return [statuses[pid] for pid in pids]


# ------------------------------------------------------------------ the tiny task
def write_tiny_data(root: Path, n_train: int = 20, n_val: int = 8, n_test: int = 6, size: int = 16) -> Path:
    """Writes a learnable 2-class PNG task (class 1 has a bright square) and its datalist JSON.

    Returns:
        The datalist path.
    """
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, n in (("training", n_train), ("validation", n_val), ("test", n_test)):
        items = []
        for i in range(n):
            label = i % 2
            a = rng.normal(100, 20, (size, size))
            if label:
                a[size // 4 : size // 2 + 2, size // 4 : size // 2 + 2] += 80
            if split == "training" and i % 5 == 4:
                label = 1 - label  # some label noise for LiLAW to weigh
            name = f"{split[:2]}{i:03d}"
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / "img" / f"{name}.png")
            items.append({"image": f"img/{name}.png", "label": label, "id": name, "group": name})
        splits[split] = items
    path = root / "datalist.json"
    path.write_text(json.dumps(splits))
    return path


def write_tiny_config(
    path: Path, datalist: Path, epochs: int = 3, every_n_iterations: int | None = 2
) -> Path:
    """A config that trains in seconds on the tiny task, with dropout (so resuming must restore the RNG)."""
    import yaml

    cfg = {
        "data": {
            "preset": "radiology_2d",
            "datalist": str(datalist),
            "sample_data": False,
            "class_names": ["neg", "pos"],
            "options": {"spatial_size": [16, 16]},
            "cache": "memory",
        },
        "model": {"network": "small_cnn", "dropout": 0.3},
        "lilaw": {"warmup_epochs": 0},  # LiLAW's state moves from the first iteration: resume must restore it
        "train": {
            "epochs": epochs,
            "batch_size": 4,
            "seed": 0,
            "device": "cpu",
            "progress": False,
            "checkpoint_every_n_iterations": every_n_iterations,
            "checkpoint_every_n_epochs": 1,
        },
        "eval": {"key_metric": "accuracy", "calibration": "none"},
        "output": {"plots": False, "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------ comparing run folders
_VOLATILE = {"run_dir", "seconds", "resumed_from_iteration", "checkpoints", "time", "wall_seconds", "elapsed"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def run_record(run_dir: Path) -> dict[str, Any]:
    """What must be identical between a resumed and an uninterrupted run: the summary (without times
    and paths), per-epoch metrics, per-iteration LiLAW values, and the training dynamics arrays."""
    record: dict[str, Any] = {"summary": _strip(json.loads((run_dir / "summary.json").read_text()))}
    for name in ("metrics.csv", "lilaw_iterations.csv"):
        with open(run_dir / name, newline="") as f:
            rows = list(csv.DictReader(f))
        record[name] = [
            {k: v for k, v in r.items() if k not in _VOLATILE and not k.endswith("_seconds")} for r in rows
        ]
    record["dynamics"] = {
        str(p.relative_to(run_dir)): np.load(p, allow_pickle=False).tolist()
        for p in sorted((run_dir / "dynamics").rglob("*.npy"))
    }
    return record


def differences(a: dict[str, Any], b: dict[str, Any], path: str = "") -> list[str]:
    """Where two records differ (exact comparison; NaN equals NaN)."""
    a, b = (v.tolist() if isinstance(v, np.ndarray) else v for v in (a, b))  # sub-arrays of structured rows
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def half_written_files(run_dir: Path) -> list[str]:
    """Files of a run folder that are not whole: JSON that does not parse, CSV rows with a different
    number of fields than the header, .npy arrays that do not load, checkpoints that do not verify.
    (Hidden ``.*.tmp`` files are the remains of interrupted atomic writes and are never read.)"""
    from lilaw_med.run.checkpoint_format import find_checkpoints, read_checkpoint

    bad = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".csv":
                with open(p, newline="") as f:
                    rows = list(csv.reader(f))
                if rows and any(len(r) != len(rows[0]) for r in rows):
                    raise ValueError("ragged rows")
            elif p.suffix == ".npy":
                np.load(p, allow_pickle=False)
            elif p.suffix == ".yaml":
                import yaml

                yaml.safe_load(p.read_text())
        except Exception as e:  # any failure to read means half-written
            bad.append(f"{p.relative_to(run_dir)}: {type(e).__name__}: {e}")
    for info in find_checkpoints(run_dir / "checkpoints"):
        try:
            read_checkpoint(info)
        except ValueError as e:
            bad.append(f"{info.path.relative_to(run_dir)}: {e}")
    return bad
