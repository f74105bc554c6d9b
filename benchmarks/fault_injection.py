"""Fault injection: ``lilaw-med train`` SIGKILLed at N random points and resumed each time, against an
uninterrupted run; the same for a 2-process (gloo, CPU) run killed inside epochs; and hostile input
files given to the readers and to ``predict``. Prints a table per part and the counts (cases, handled
correctly).

::

    python -m benchmarks.fault_injection [--kills 20] [--distributed-kills 4] [--seed 0] [--epochs 6]
                                         [--no-hostile] [--out DIR]

The smallest setting (about a minute on 2 CPU cores): ``--kills 1 --distributed-kills 1 --epochs 2``.

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

**Distributed.** Two ranks (children forked with torchrun's environment, ``run_cli_ranks``), each
seeded apart (``RankSeeds``: dropout differs between ranks, so only per-rank random states resume
exactly), are SIGKILLed together at a random ``iteration``, ``batch`` or ``epoch_end`` point after
the newest checkpoint and resumed with two processes; the run folder is compared exactly with an
uninterrupted 2-process run, and every epoch's dynamics must count every rank's items.

**Hostile inputs.** Each file is checked (``read_header``, the pre-flight's verdict) and loaded (the
training loader) in a forked child with a 60 s limit: handled correctly means the expected outcome
(one line naming the file with the expected reason, or a normal read) without a hang, a traceback
or an allocation of what the header declares; then ``lilaw-med predict`` on all of them at once must
give each a row and exit 1.

The training processes are forked from this one after the imports (see
``tests/training/fault_harness.py``) and run ``lilaw_med.cli.main``, what the console script runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.training.fault_harness import (
    KILL_KINDS,
    Hooks,
    Kill,
    RankSeeds,
    differences,
    half_written_files,
    run_cli,
    run_cli_ranks,
    run_record,
    write_tiny_config,
    write_tiny_data,
)

ITERATIONS_PER_EPOCH = 5  # 20 training items, batch 4
CHECKPOINT_EVERY = 2
WORLD_SIZE = 2
DDP_ITERATIONS_PER_EPOCH = 3  # 10 items per rank, batch 4: 4, 4, 2
DDP_KILL_KINDS = (
    "iteration",
    "batch",
    "epoch_end",
)  # a kill inside rank 0's write would leave rank 1 waiting
CHILD_TIMEOUT_S = 60.0


def _newest_valid(run: Path) -> int:
    from lilaw_med.run.checkpoint_format import load_latest_checkpoint

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


# ------------------------------------------------------------------ distributed kills
def run_distributed(
    root: Path, config: Path, kills: int, epochs: int, rng: random.Random
) -> tuple[list[tuple], bool]:
    """A 2-process run killed ``kills`` times inside the run and resumed, against an uninterrupted one.

    Returns:
        The rows ``(#, kind, at, exit, started from, newest valid checkpoint, half-written files)`` and
        whether the run folders are identical (dynamics included) with no half-written file.
    """
    seeds = RankSeeds()
    total = epochs * DDP_ITERATIONS_PER_EPOCH
    reference, run = root / "ddp_uninterrupted", root / "ddp_killed"
    if run_cli_ranks(
        ["train", "--config", str(config), "-o", str(reference)], WORLD_SIZE, seeds, root / "ddp_ref.log"
    ) != [0, 0]:
        print(f"the uninterrupted 2-process run failed; see {root / 'ddp_ref.log.rank0'}", file=sys.stderr)
        return [], False
    rows, start, argv = [], 0, ["train", "--config", str(config), "-o", str(run)]
    for n in range(1, kills + 1):
        # after the newest checkpoint, and never before the first one (nothing to resume from there)
        low = max(start, CHECKPOINT_EVERY) + 1
        span = max(1, math.ceil(1.5 * (total - low + 1) / (kills - n + 1)))
        k = rng.randint(low, min(total, low - 1 + span))
        kind = rng.choice(DDP_KILL_KINDS)
        kill = Kill(kind, (k - 1) // DDP_ITERATIONS_PER_EPOCH + 1 if kind == "epoch_end" else k)
        status = run_cli_ranks(argv, WORLD_SIZE, Hooks((seeds, kill)), root / "ddp_killed.log")
        newest = _newest_valid(run)
        rows.append(
            (
                n,
                kind,
                kill.at,
                "SIGKILL" if status == [-9, -9] else status,
                start,
                newest,
                len(half_written_files(run)),
            )
        )
        if status != [-9, -9]:
            return rows, False
        start, argv = newest, ["train", "--resume", str(run)]
    if run_cli_ranks(argv, WORLD_SIZE, seeds, root / "ddp_killed.log") != [0, 0]:
        print(f"the final 2-process resume failed; see {root / 'ddp_killed.log.rank0'}", file=sys.stderr)
        return rows, False
    diffs = differences(run_record(run), run_record(reference))
    if diffs:
        print(f"2-process runs differ: {len(diffs)} differences, e.g. {diffs[:3]}", file=sys.stderr)
    from lilaw_med.run.dynamics_format import load_dynamics

    train = load_dynamics(run, "training")
    complete = bool((train["count"] == 1).all())  # 20 items over 2 ranks: each once per epoch, no padding
    return rows, not diffs and complete and not half_written_files(run) and all(r[6] == 0 for r in rows)


# ------------------------------------------------------------------ hostile inputs
@dataclass(frozen=True)
class HostileCase:
    """One hostile input: how to make it, and what the readers must say (``None``: read normally)."""

    name: str
    make: Callable[[Path], Path]
    expected: str | None


def _huge_nifti(folder: Path) -> Path:
    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = folder / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)  # a 352-byte file declaring 98 TiB
    return path


def _huge_dicom(folder: Path) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = 10_000_000  # 128 x 128 x 16 bits x 10^7 frames = 305 GiB declared
    path = folder / "huge_frames.dcm"
    ds.save_as(path)
    return path


def _huge_tiff(folder: Path) -> Path:
    import struct

    # a hand-written TIFF header: one 16-bit grey page of 100000 x 100000 pixels, one byte of data
    entries = [(256, 4, 1, 100_000), (257, 4, 1, 100_000), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 100_000), (279, 4, 1, 1)]  # fmt: skip
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, typ, count, value)
            if typ == 4
            else struct.pack("<HHIHH", tag, typ, count, value, 0)
            for tag, typ, count, value in entries
        )
        + struct.pack("<I", 0)
    )
    path = folder / "huge_page.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", 9) + b"\x00" + ifd)
    return path


def _series(folder: Path, name: str) -> Path:
    import pydicom

    source = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033" / "CT2"
    target = folder / name
    shutil.copytree(source, target)
    return target


def _fifo_in_series(folder: Path) -> Path:
    series = _series(folder, "series_with_fifo")
    os.mkfifo(series / "0000_slice.dcm")
    return series


def _loop_in_series(folder: Path) -> Path:
    series = _series(folder, "series_with_loop")
    (series / "loop.dcm").symlink_to("loop.dcm")
    return series


def _dangling_in_series(folder: Path) -> Path:
    series = _series(folder, "series_with_dangling_link")
    (series / "gone.dcm").symlink_to(folder / "does_not_exist.dcm")
    return series


def _device_in_series(folder: Path) -> Path:
    series = _series(folder, "series_with_device")
    (series / "zero.dcm").symlink_to("/dev/zero")  # read to the end, /dev/zero never ends
    return series


def _fifo_input(folder: Path) -> Path:
    path = folder / "pipe.nii"
    os.mkfifo(path)
    return path


def _device_input(folder: Path) -> Path:
    path = folder / "zero.dcm"
    path.symlink_to("/dev/zero")
    return path


HOSTILE_CASES = (
    HostileCase("NIfTI header declaring 30000^3 int16 voxels (352-byte file)", _huge_nifti, "the header declares 30000 x 30000 x 30000"),
    HostileCase("DICOM declaring 10^7 frames of 128 x 128", _huge_dicom, "the header declares 128 x 128 x 10000000 x 1"),
    HostileCase("TIFF page declaring 100000 x 100000 x 16 bits", _huge_tiff, "100000"),
    HostileCase("FIFO named like a slice in a DICOM series folder", _fifo_in_series, None),
    HostileCase("self-looping symlink in a DICOM series folder", _loop_in_series, "a symbolic link that loops"),
    HostileCase("dangling symlink in a DICOM series folder", _dangling_in_series, "a symbolic link that points nowhere"),
    HostileCase("symlink to /dev/zero in a DICOM series folder", _device_in_series, None),
    HostileCase("FIFO given as an input (pipe.nii)", _fifo_input, "a FIFO, not an image file"),
    HostileCase("symlink to /dev/zero given as an input (zero.dcm)", _device_input, "a device, not an image file"),
)  # fmt: skip


def _in_child(fn: Callable[[], int], timeout: float = CHILD_TIMEOUT_S) -> int | str:
    """``fn()`` in a forked child: its return value, ``"hang"`` after ``timeout`` s, or ``"crash"``."""
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = int(fn())
        except BaseException:
            code = 98
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else "crash"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hang"


def _check_case(path: Path, expected: str | None) -> int:
    """0 when ``read_header`` and the loader both give the expected outcome in one line, else 1 (in the child)."""
    import warnings

    from lilaw_med.data.readers import LoadMedicalImaged, read_header

    def header() -> None:
        read_header(path)

    def load() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LoadMedicalImaged("image")({"image": str(path)})

    for check in (header, load):
        try:
            check()
        except (ValueError, FileNotFoundError) as e:
            message = str(e)
            if expected is None or expected not in message or "\n" in message or str(path) not in message:
                return 1
            continue
        except BaseException:  # MemoryError, a library's own error type: a traceback for the user
            return 1
        if expected is not None:
            return 1
    return 0


def run_hostile(root: Path, run_dir: Path | None) -> list[tuple[str, str, bool]]:
    """Every hostile case, then ``predict`` over all of them (when a trained run is given).

    Returns:
        ``(case, outcome, handled correctly)`` rows.
    """
    import lilaw_med.cli.train  # noqa: F401  (imported once here, not in every child)
    from lilaw_med.data.readers import LoadMedicalImaged

    LoadMedicalImaged("image")  # MONAI's loader and its readers, imported before the forks too
    folder = root / "hostile"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    paths = []
    for case in HOSTILE_CASES:
        path = case.make(folder)
        paths.append(path)
        status = _in_child(lambda path=path, case=case: _check_case(path, case.expected))
        outcome = {0: "as expected", 1: "wrong outcome or traceback"}.get(status, str(status))  # type: ignore[arg-type]
        rows.append((case.name, outcome, status == 0))
    if run_dir is not None:
        out = folder / "predictions.csv"

        def predict() -> int:
            import csv

            from lilaw_med.cli import main

            status = main(["predict", str(run_dir), *map(str, paths), "-o", str(out)])
            with open(out, newline="") as f:
                rows_out = list(csv.DictReader(f))
            # every input a row with its reason, none with a class (the 2D model refuses the 3D series too)
            ok = len(rows_out) == len(paths) and all(
                r["error"] and not r["predicted_class"] for r in rows_out
            )
            return 0 if status == 1 and ok else 1

        status = _in_child(predict, 3 * CHILD_TIMEOUT_S)
        rows.append(
            (
                f"lilaw-med predict over all {len(paths)} inputs: a row each, exit 1",
                {0: "as expected"}.get(status, str(status)),
                status == 0,
            )
        )  # type: ignore[arg-type]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the experiment and prints the table.

    Returns:
        0 when the resumed run equals the uninterrupted one and no run folder was half-written, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="number of SIGKILLs (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the run (default 6: 30 iterations)")
    parser.add_argument(
        "--distributed-kills",
        type=int,
        default=4,
        help="SIGKILLs of a 2-process gloo run (default 4; 0: skip)",
    )
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile input files")
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
    counts = [
        ("single-process SIGKILLs, resumed to an identical run folder", kills_done, kills_done if same else 0)
    ]

    if args.distributed_kills > 0:
        t = time.perf_counter()
        ddp_rows, ddp_same = run_distributed(root, config, args.distributed_kills, args.epochs, rng)
        print(
            f"\n## Distributed: a 2-process (gloo) run SIGKILLed {len(ddp_rows)} time(s), resumed with 2 processes\n"
        )
        print(
            "| # | kill kind | at (iteration, or epoch) | exit | started from iteration | newest valid checkpoint | half-written files |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in ddp_rows:
            print("| " + " | ".join(str(v) for v in r) + " |")
        print(
            f"\nidentical to the uninterrupted 2-process run (weights, metrics, every rank's dynamics): {ddp_same} "
            f"({time.perf_counter() - t:.1f} s)"
        )
        counts.append(
            (
                "2-process SIGKILLs inside the run, resumed exactly",
                args.distributed_kills,
                len(ddp_rows) if ddp_same else 0,
            )
        )
        same = same and ddp_same

    if not args.no_hostile:
        hostile = run_hostile(root, reference)
        print("\n## Hostile inputs (read_header and the loader in a child with a 60 s limit; then predict)\n")
        print("| case | outcome | handled correctly |")
        print("|---|---|---|")
        for name, outcome, ok in hostile:
            print(f"| {name} | {outcome} | {'yes' if ok else 'NO'} |")
        counts.append(("hostile inputs", len(hostile), sum(ok for _, _, ok in hostile)))
        same = same and all(ok for _, _, ok in hostile)

    print("\n## Counts\n")
    print("| part | cases | handled correctly |")
    print("|---|---|---|")
    for name, n, ok in counts:
        print(f"| {name} | {n} | {ok} |")
    print(f"| total | {sum(c[1] for c in counts)} | {sum(c[2] for c in counts)} |")
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
