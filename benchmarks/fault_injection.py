"""Fault injection: ``lilaw-med train`` SIGKILLed at N random points and resumed each time, against an
uninterrupted run; prints a table (one row per kill) and whether the two run folders agree.

::

    python -m benchmarks.fault_injection [--kills 20] [--seed 0] [--epochs 6] [--out DIR]

The task is tiny (20 training PNGs of 16 x 16 px, batch 4: 5 iterations per epoch; a small CNN with
dropout, so the random number generators matter) so that the whole experiment takes about a minute
of CPU. Each kill point is drawn at random after the newest checkpoint (within a window that spreads
the kills over the whole run), with a random kind:

* ``iteration``: SIGKILL after iteration k ran (before its checkpoint is written);
* ``batch``: SIGKILL after the batch of iteration k was loaded, before its model step;
* ``epoch_end``: SIGKILL at the end of an epoch, after validation, before the epoch checkpoint;
* ``ckpt_write``: SIGKILL inside the write of a checkpoint (temporary file written, not renamed).

After each kill the run folder is checked for half-written files (JSON/CSV/YAML/NPY that do not
parse, checkpoints that do not verify), then ``lilaw-med train --resume RUN_DIR`` continues it. At
the end the run folder is compared exactly with the uninterrupted run: the summary (without times
and paths), ``metrics.csv``, ``lilaw_iterations.csv`` (alpha, beta, delta and weight statistics of
every iteration) and the training dynamics arrays.

The training processes are forked from this one after the imports (see
``tests/training/fault_harness.py``) and run ``lilaw_med.cli.main``, what the console script runs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.training.fault_harness import (
    KILL_KINDS,
    Kill,
    differences,
    half_written_files,
    run_cli,
    run_record,
    write_tiny_config,
    write_tiny_data,
)

ITERATIONS_PER_EPOCH = 5  # 20 training items, batch 4
CHECKPOINT_EVERY = 2


def _newest_valid(run: Path) -> int:
    from lilaw_med.handlers.checkpoint import load_latest_checkpoint

    try:
        return load_latest_checkpoint(run / "checkpoints")[0].iteration
    except (FileNotFoundError, ValueError):
        return 0


def _kill_at(rng: random.Random, k: int, total: int) -> Kill:
    """A kill of a random kind at (or, for the kinds tied to an event, just after) iteration ``k``."""
    kind = rng.choice(KILL_KINDS)
    if kind == "epoch_end":
        return Kill(kind, (k - 1) // ITERATIONS_PER_EPOCH + 1)
    if kind == "ckpt_write":
        # the next checkpoint written at or after k: every CHECKPOINT_EVERY iterations or at an epoch end
        while k % CHECKPOINT_EVERY and k % ITERATIONS_PER_EPOCH:
            k += 1
        return Kill(kind, min(k, total))
    return Kill(kind, k)


def main(argv: list[str] | None = None) -> int:
    """Runs the experiment and prints the table.

    Returns:
        0 when the resumed run equals the uninterrupted one and no run folder was half-written, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="number of SIGKILLs (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the run (default 6: 30 iterations)")
    parser.add_argument("--out", help="work folder (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import lilaw_med.cli.train  # noqa: F401  (imported once here, before the forks)

    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="lilaw-fault-")
    root = Path(args.out or tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    config = write_tiny_config(
        root / "tiny.yaml",
        write_tiny_data(root / "data"),
        epochs=args.epochs,
        every_n_iterations=CHECKPOINT_EVERY,
    )
    total = args.epochs * ITERATIONS_PER_EPOCH
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    reference = root / "uninterrupted"
    status = run_cli(
        ["train", "--config", str(config), "--output", str(reference)], log=root / "uninterrupted.log"
    )
    t_reference = time.perf_counter() - t0
    if status != 0:
        print(
            f"the uninterrupted run failed (exit {status}); see {root / 'uninterrupted.log'}", file=sys.stderr
        )
        return 1

    run, log = root / "killed", root / "killed.log"
    rows = []
    t_killed = 0.0
    argv_next = ["train", "--config", str(config), "--output", str(run)]
    kills_done, resume_from = 0, 0
    while kills_done < args.kills:
        # after the newest checkpoint (so the point is reached), spread so the kills cover the whole run
        span = max(1, math.ceil(1.5 * (total - resume_from) / (args.kills - kills_done)))
        kill = _kill_at(rng, rng.randint(resume_from + 1, min(total, resume_from + span)), total)
        t = time.perf_counter()
        status = run_cli(argv_next, kill=kill, log=log)
        t_killed += time.perf_counter() - t
        if status != -9:  # never reached (the run finished) or a failure: stop and say so
            print(
                f"segment {kills_done + 1} ended with exit {status} instead of SIGKILL; see {log}",
                file=sys.stderr,
            )
            return 1
        kills_done += 1
        broken = half_written_files(run)
        newest = _newest_valid(run)
        rows.append((kills_done, kill.kind, kill.at, status, resume_from, newest, len(broken)))
        resume_from = newest
        argv_next = ["train", "--resume", str(run)]
    t = time.perf_counter()
    status = run_cli(argv_next, log=log)
    t_killed += time.perf_counter() - t
    if status != 0:
        print(f"the final resume failed (exit {status}); see {log}", file=sys.stderr)
        return 1

    diffs = differences(run_record(run), run_record(reference))
    broken_final = half_written_files(run)
    ref_summary = json.loads((reference / "summary.json").read_text())
    got_summary = json.loads((run / "summary.json").read_text())

    print(f"## Fault injection: {kills_done} SIGKILLs at random points, seed {args.seed}\n")
    print(
        f"Tiny task: {args.epochs} epochs x {ITERATIONS_PER_EPOCH} iterations, checkpoint every "
        f"{CHECKPOINT_EVERY} iterations and every epoch (keep_last 2).\n"
    )
    print(
        "| # | kill kind | at (iteration, or epoch for epoch_end) | exit | started from iteration | "
        "newest valid checkpoint after the kill | half-written files |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]} | {'SIGKILL' if r[3] == -9 else r[3]} | {r[4]} | {r[5]} | {r[6]} |"
        )
    print()
    print("| | uninterrupted | killed and resumed |")
    print("|---|---|---|")
    for key in ("alpha", "beta", "delta"):
        print(f"| {key} | {ref_summary['lilaw'][key]:.9g} | {got_summary['lilaw'][key]:.9g} |")
    for split in ("validation", "test"):
        for metric in ("accuracy", "auroc", "loss"):
            a, b = ref_summary["final"][split][metric], got_summary["final"][split][metric]
            print(f"| final {split} {metric} | {a:.9g} | {b:.9g} |")
    print(f"| wall time (s) | {t_reference:.1f} | {t_killed:.1f} (all segments) |")
    print()
    same = not diffs and not broken_final and all(r[6] == 0 for r in rows)
    print(
        f"identical run folders (summary, metrics.csv, lilaw_iterations.csv, dynamics): {not diffs}"
        + ("" if not diffs else f" -- {len(diffs)} differences, e.g. {diffs[:3]}")
    )
    print(f"half-written files after any kill or at the end: {sum(r[6] for r in rows) + len(broken_final)}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
