"""torchrun with a rank 0 that works alone longer than the collective timeout: the other ranks wait
outside any collective (``distributed.run_on_rank0``), and the run trains and finishes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.torchrun import free_port, torchrun_command, torchrun_env
from tests.training.test_distributed_cli import _write_data

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MINUTES = 0.1  # a 6 s collective timeout
SLOW_PREFLIGHT_S = 15.0  # rank 0's pre-flight check: longer than the timeout

_SLOW_RANK0 = f"""
import sys, time
import lilaw_med.training.run as run
real = run.prepare_datalist

def slow(*args, **kwargs):
    time.sleep({SLOW_PREFLIGHT_S})
    return real(*args, **kwargs)

run.prepare_datalist = slow
from lilaw_med.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_pre_flight_longer_than_the_collective_timeout_still_trains(tmp_path: Path) -> None:
    datalist = _write_data(tmp_path / "data")
    config = {
        "data": {"preset": "radiology_2d", "datalist": str(datalist), "options": {"spatial_size": [16, 16]},
                 "cache": "none"},
        "model": {"network": "small_cnn"},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "device": "cpu",
                  "dist_timeout_minutes": TIMEOUT_MINUTES},
        "eval": {"calibration": "none"},
        "output": {"dir": str(tmp_path / "runs"), "name": "slow", "plots": False, "tensorboard": False},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "slow_rank0.py").write_text(_SLOW_RANK0)
    env = torchrun_env(tmp_path, {**os.environ, "OMP_NUM_THREADS": "1",
                                  "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])})
    cmd = torchrun_command(2, str(tmp_path / "slow_rank0.py"), "train", "--config", str(tmp_path / "tiny.yaml"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "runs" / "slow" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["iterations"] == 3  # ceil(ceil(23 / 2 ranks) / 4)
    assert summary["seconds"] > SLOW_PREFLIGHT_S


def _waiting_worker(rank: int, port: int, out_dir: str) -> None:
    import torch

    from lilaw_med.training import distributed as D

    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    context = D.init_distributed(device="cpu", environ=env, timeout_s=60)
    seen: dict[str, str] = {}
    try:
        def fail() -> None:
            raise ValueError("item x: bad header")

        try:  # an error of rank 0's work reaches the waiting rank
            D.run_on_rank0(fail, "the check", timeout_s=30)
        except (ValueError, RuntimeError) as e:
            seen["error"] = f"{type(e).__name__}: {e}"

        def bad_input() -> None:
            from lilaw_med.errors import InputError

            raise InputError("items.csv: label 7 is out of range")

        try:  # a user's error on rank 0 stays one on the waiting rank (the CLI prints it as one line)
            D.run_on_rank0(bad_input, "the pre-flight", timeout_s=30)
        except ValueError as e:
            seen["input"] = f"{type(e).__name__}: {e}"
        seen["result"] = repr(D.run_on_rank0(lambda: 41 + 1, "the sum", timeout_s=30))
        if rank == 1:  # rank 0 never starts this work: no beat comes, the wait ends after its timeout
            try:
                D.run_on_rank0(lambda: None, "work rank 0 never starts", timeout_s=1.0)
            except TimeoutError as e:
                seen["timeout"] = str(e)
        else:
            import time

            time.sleep(3.0)  # alive (it hosts the store) but silent
        torch.save(seen, Path(out_dir) / f"rank{rank}.pt")
    finally:
        D.cleanup_distributed(context)


def test_waiting_ranks_learn_rank0s_error_its_result_and_time_out_without_a_beat(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_waiting_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method=method)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert rank0["error"] == "ValueError: item x: bad header"
    assert rank1["error"] == "RuntimeError: rank 0 failed while it ran the check: ValueError: item x: bad header"
    assert rank0["input"] == "InputError: items.csv: label 7 is out of range"
    assert rank1["input"] == "InputError: rank 0 stopped while it ran the pre-flight: items.csv: label 7 is out of range"
    assert rank0["result"] == "42" and rank1["result"] == "None"  # the result stays on rank 0 (broadcast it)
    assert rank1["timeout"].startswith("rank 1: no sign of rank 0 for 0.0166667 minutes while it runs work rank 0")
