"""Clean shutdown of 2-process torchrun runs (gloo, CPU): N consecutive runs, a table of aborts.

Issue 13.4: a 2-process torchrun run sometimes ended with a rank aborting at shutdown
(``terminate called without an active exception``, torchrun rc=1) after its run folder was
complete: 1 of 21 CLI runs, 1 of 11 bundle runs. The floor is 0 aborts in 50 consecutive runs of
each kind. Two kinds, each on tiny synthetic data (16x16 PNG images), 1 epoch:

* ``cli``: ``torchrun --nproc_per_node 2 -m lilaw_med train`` (the CLI's own DDP path);
* ``bundle``: ``torchrun --nproc_per_node 2 -m monai.bundle run`` of a flat-id fixture bundle with
  the LiLAW overlay and the multi-GPU override written by ``lilaw-med bundle overlay --multi-gpu``.

Each run is a fresh torchrun on a free local port. A run counts as an *abort* when any process
printed "terminate called" or died of a signal (torchrun's "exitcode: -N"), as *failed* for any
other non-zero return code, as *ok* otherwise. Logs of every run that was not ok are kept.

Run (the 50-run check takes about an hour on 2 cores)::

    nice -n 10 python -m benchmarks.shutdown_loop --runs 50 --out /tmp/shutdown_loop
    python -m benchmarks.shutdown_loop --runs 2 --kinds cli      # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
KINDS = ("cli", "bundle")
_SIGNAL = re.compile(r"exitcode\s*:\s*-\d+")


@dataclass
class Tally:
    """The outcome of the runs of one kind.

    Attributes:
        kind: ``"cli"`` or ``"bundle"``.
        ok: runs with return code 0 and no abort message.
        aborts: runs where a process printed "terminate called" or died of a signal.
        failed: other non-zero return codes.
        seconds: wall-clock seconds per run.
        logs: the kept logs of the runs that were not ok.
    """

    kind: str
    ok: int = 0
    aborts: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _prepare_cli(work: Path) -> Path:
    """Tiny PNG data and a 1-epoch config; returns the config file."""
    from tests.bundle.fixture_bundle import write_images

    rng = np.random.default_rng(0)
    datalist = {split: write_images(work / "images", n, rng, split)
                for split, n in (("training", 16), ("validation", 8), ("test", 8))}
    (work / "datalist.json").write_text(json.dumps(datalist))
    config = {
        "data": {"preset": "radiology_2d", "datalist": str(work / "datalist.json"), "cache": "none",
                 "options": {"spatial_size": [16, 16]}},
        "model": {"network": "small_cnn"},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "device": "cpu"},
        "eval": {"calibration": "none"},
        "output": {"plots": False, "tensorboard": False},
    }
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _prepare_bundle(work: Path) -> list[str]:
    """A flat-id fixture bundle and its generated overlays; returns the ``monai.bundle run`` arguments."""
    from lilaw_med.bundle.overlay import find_layout, write_overlays
    from tests.bundle.fixture_bundle import write_classification_bundle

    bundle = write_classification_bundle(work / "bundle", n_train=16, n_val=8, batch_size=4, max_epochs=1, style="flat")
    overlay, multi = write_overlays(find_layout(bundle), work / "lilaw_overlay.yaml", multi_gpu=True)
    files = ["configs/train.yaml", str(overlay), str(multi)]
    return ["-m", "monai.bundle", "run", "--config_file", repr(files), "--bundle_root", str(bundle),
            "--meta_file", "configs/metadata.json"]


def _one_run(kind: str, work: Path, i: int, setup: Path | list[str]) -> tuple[int, str, float]:
    if kind == "cli":
        run_dir = work / "runs" / f"r{i:03d}"
        # a run folder left by an earlier loop in the same --out would make train refuse it (rc 1, and
        # torchrun's SIGTERM of the other rank would read as an abort)
        shutil.rmtree(run_dir, ignore_errors=True)
        args = ["-m", "lilaw_med", "train", "--config", str(setup), "--output", str(run_dir)]
        cwd = work
    else:
        args, cwd = list(setup), work / "bundle"
    start = time.monotonic()
    proc = subprocess.run(_torchrun(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def run_loop(kinds: list[str], runs: int, out: Path) -> list[Tally]:
    """Runs ``runs`` consecutive torchrun runs of each kind.

    Args:
        kinds: a subset of ``KINDS``.
        runs: runs per kind.
        out: a work folder (data, run folders, the logs of runs that were not ok).

    Returns:
        One :class:`Tally` per kind.
    """
    tallies = []
    for kind in kinds:
        work = out / kind
        work.mkdir(parents=True, exist_ok=True)
        setup = _prepare_cli(work) if kind == "cli" else _prepare_bundle(work)
        tally = Tally(kind)
        for i in range(runs):
            rc, log, seconds = _one_run(kind, work, i, setup)
            tally.seconds.append(seconds)
            aborted = "terminate called" in log or bool(_SIGNAL.search(log))
            if rc == 0 and not aborted:
                tally.ok += 1
            else:
                tally.aborts += aborted
                tally.failed += not aborted
                path = out / f"{kind}_run{i:03d}_rc{rc}.log"
                path.write_text(log)
                tally.logs.append(str(path))
            print(f"{kind} run {i + 1}/{runs}: rc {rc}{' ABORT' if aborted else ''} ({seconds:.1f} s)", flush=True)
        tallies.append(tally)
    return tallies


def format_table(tallies: list[Tally]) -> str:
    """The table printed at the end: runs, ok, aborts, other failures, seconds per run."""
    lines = [f"{'kind':8}{'runs':>6}{'ok':>6}{'aborts':>8}{'failed':>8}{'s/run':>8}"]
    for t in tallies:
        n = len(t.seconds)
        mean = sum(t.seconds) / n if n else float("nan")
        lines.append(f"{t.kind:8}{n:>6}{t.ok:>6}{t.aborts:>8}{t.failed:>8}{mean:>8.1f}")
    for t in tallies:
        lines += [f"  kept log: {p}" for p in t.logs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="consecutive runs per kind (default 50)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of cli,bundle")
    parser.add_argument("--out", default="/tmp/lilaw_shutdown_loop", help="work folder (default /tmp/lilaw_shutdown_loop)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or args.runs < 1:
        parser.error(f"--kinds must be among {', '.join(KINDS)} and --runs positive")
    tallies = run_loop(kinds, args.runs, Path(args.out))
    print(format_table(tallies))
    return 0 if all(t.aborts == 0 and t.failed == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
