"""One process at a time writes a run folder: a second ``train -o``, a ``--resume`` or an ``audit`` of a
live run gets one line and exit 1; a killed run's folder is free again at once; ``--resume`` refuses a
changed config outside its allow-list, naming the key."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lilaw_med.run.run_dir import RunDir, RunDirBusyError, RunLock
from lilaw_med.training.resume import RESUME_CHANGEABLE, check_resume_config
from tests.training.fault_harness import (
    FORK_AND_PROC,
    Pause,
    run_cli,
    start_cli,
    wait_cli,
    write_tiny_config,
    write_tiny_data,
)

pytestmark = pytest.mark.skipif(not FORK_AND_PROC, reason="forks the lilaw-med CLI: Linux only")


def _create(folder: str, start: Any, attempted: Any, results: Any) -> None:
    """Child: create the run folder at the same moment as the other child; keep it (and its lock) until
    both have tried, so the outcome cannot depend on which one finishes first."""
    start.wait()
    held = []  # the RunDir holds the lock: it must outlive the second barrier
    try:
        held.append(RunDir(folder).create())
        outcome = "created"
    except RunDirBusyError:
        outcome = "busy"
    except FileExistsError:
        outcome = "exists"
    attempted.wait()
    results.put(outcome)
    results.close()
    results.join_thread()
    os._exit(0)


def test_two_processes_creating_the_same_run_folder_exactly_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for trial in range(15):  # without the lock both "succeeded" in about 1 race of 4
        folder = str(tmp_path / f"run{trial}")
        start, attempted, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
        children = [ctx.Process(target=_create, args=(folder, start, attempted, results)) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
            assert child.exitcode == 0
        assert sorted(results.get(timeout=5) for _ in range(2)) == ["busy", "created"], f"trial {trial}"
        # both children exited: the winner's lock went with it, the folder is free and not empty only of .lock
        assert sorted(p.name for p in Path(folder).iterdir()) == [".lock", "checkpoints", "plots"]
        RunLock(folder).acquire().release()


def test_lock_of_a_dead_process_is_free_and_names_a_live_holder(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: (RunDir(tmp_path).lock("lilaw-med train"), os.kill(os.getpid(), 9)))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert f'"pid": {child.pid}' in (tmp_path / RunDir.LOCK).read_text()  # the dead holder's record stays
    lock = RunDir(tmp_path).lock("lilaw-med audit")  # ... but the kernel dropped its lock: no stale lock
    with pytest.raises(RunDirBusyError, match=rf"in use by lilaw-med audit, pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()  # a second open file description of this very process is refused too
    lock.release()
    RunLock(tmp_path).acquire().release()


def _error_lines(log: Path) -> list[str]:
    text = log.read_text()
    assert "Traceback" not in text
    return [line for line in text.splitlines() if ": error: " in line]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lock")
    return {"root": root, "config": write_tiny_config(root / "tiny.yaml", write_tiny_data(root / "data"), epochs=2)}


def test_a_live_run_refuses_train_resume_and_audit_then_resumes_once_killed(tiny: dict[str, Path]) -> None:
    root, config = tiny["root"], tiny["config"]
    run, ready, go = root / "live", root / "ready", root / "go"
    pid = start_cli(["train", "--config", str(config), "-o", str(run)], Pause(3, ready, go), log=root / "live.log")
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():  # paused after iteration 3 (checkpoint 2 written): the run is live
            assert time.monotonic() < deadline, (root / "live.log").read_text()[-2000:]
            time.sleep(0.05)
        for name, argv in (
            ("second", ["train", "--config", str(config), "-o", str(run)]),
            ("resume", ["train", "--resume", str(run)]),
            ("audit", ["audit", str(run), "--no-thumbnails"]),
            ("evaluate", ["evaluate", str(run)]),  # its report goes into the run folder
        ):
            log = root / f"{name}.log"
            assert run_cli(argv, log=log) == 1, log.read_text()[-2000:]
            command = name if name in ("audit", "evaluate") else "train"
            hint = " Or write the report elsewhere: --output PATH." if name == "evaluate" else ""
            assert _error_lines(log) == [
                f"lilaw-med {command}: error: run folder {run} is in use by lilaw-med train, pid {pid} on "
                f"{socket.gethostname()}, since {_since(run)}; wait until it finishes (a folder whose process was "
                f"killed is free again at once).{hint}"
            ]
        assert not (run / "audit").exists() and not (run / "evaluation.json").exists()
        # a report written elsewhere only reads the run: no lock (here: no best model yet, one line)
        log = root / "evaluate_elsewhere.log"
        assert run_cli(["evaluate", str(run), "-o", str(root / "eval.json")], log=log) == 1
        (line,) = _error_lines(log)
        assert "in use" not in line and "best_model.pt" in line, line
    finally:
        os.kill(pid, signal.SIGKILL)  # killed while holding the lock
        assert wait_cli(pid) == -signal.SIGKILL
    log = root / "resumed.log"
    assert run_cli(["train", "--resume", str(run)], log=log) == 0, log.read_text()[-2000:]
    assert "iteration 2," in log.read_text()  # resumed from the checkpoint of iteration 2
    assert '"command": "lilaw-med train --resume"' in (run / RunDir.LOCK).read_text()
    assert (run / "summary.json").is_file()


def _since(run: Path) -> str:
    import json

    return json.loads((run / RunDir.LOCK).read_text())["since"]


def test_resume_refuses_a_changed_seed_and_fewer_epochs_naming_the_key(tiny: dict[str, Path]) -> None:
    root = tiny["root"]
    run, log = root / "finished", root / "changed.log"
    assert run_cli(["train", "--config", str(tiny["config"]), "-o", str(run)], log=log) == 0
    before = (run / "config.yaml").read_bytes()
    assert run_cli(["train", "--resume", str(run), "--set", "train.seed=5"], log=log) == 1
    assert _error_lines(log)[-1] == (
        f"lilaw-med train: error: cannot resume with 'train.seed' changed from 0 (in {run / 'config.yaml'}) to 5: "
        f"only {', '.join(sorted(RESUME_CHANGEABLE))} may change on --resume; start a new run (a new --output) instead."
    )
    assert run_cli(["train", "--resume", str(run), "--set", "train.epochs=1"], log=log) == 1
    assert "'train.epochs' changed from 2" in _error_lines(log)[-1] and "fewer epochs" in _error_lines(log)[-1]
    assert (run / "config.yaml").read_bytes() == before  # nothing rewritten, nothing trained
    assert (run / ".lock").is_file() and RunLock(run).acquire().release() is None  # released on the error


def test_resume_allow_list_is_the_schemas_resumable_fields() -> None:
    assert sorted(RESUME_CHANGEABLE) == [
        "data.cache_memory_fraction", "train.checkpoint_every_n_epochs", "train.checkpoint_every_n_iterations",
        "train.device", "train.dist_timeout_minutes", "train.epochs", "train.keep_last", "train.max_checkpoint_ratio",
        "train.num_workers", "train.progress",
    ]
    assert all(reason for reason in RESUME_CHANGEABLE.values())  # each says why a change is harmless


def test_resume_config_allow_list() -> None:
    saved = yaml.safe_load(
        "data: {sample_data: true, options: {spatial_size: [16, 16]}}\ntrain: {epochs: 2, device: cpu}\n"
    )
    allowed = {
        **saved, "train": {"epochs": 5, "device": "cuda", "progress": False, "num_workers": 2, "keep_last": 3},
        "data": {**saved["data"], "cache_memory_fraction": 0.25},
    }
    check_resume_config(saved, allowed)  # more epochs, another device, display and checkpoint cadence
    for changed, key in (
        ({**saved, "data": {"sample_data": True, "options": {"spatial_size": [32, 16]}}}, "data.options.spatial_size"),
        ({**saved, "optim": {"lr": 0.1}}, "optim.lr"),
        ({**saved, "train": {"epochs": 2, "device": "cpu", "batch_size": 8}}, "train.batch_size"),
        ({**saved, "data": {"sample_data": True, "skip_bad": True, "options": {"spatial_size": [16, 16]}}},
         "data.skip_bad"),
    ):
        with pytest.raises(ValueError, match=rf"cannot resume with '{key}' changed"):
            check_resume_config(saved, changed)
