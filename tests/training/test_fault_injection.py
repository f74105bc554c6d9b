"""``lilaw-med train`` killed with SIGKILL at six points and resumed with ``--resume RUN_DIR`` each time
ends with exactly the run folder of an uninterrupted run, and is never left half-written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.training.fault_harness import (
    FORK_AND_PROC,
    Kill,
    differences,
    half_written_files,
    run_cli,
    run_record,
    write_tiny_config,
    write_tiny_data,
)

pytestmark = pytest.mark.skipif(
    not FORK_AND_PROC, reason="forks the lilaw-med CLI and reads /proc: Linux only"
)


EPOCHS, ITERATIONS = (
    3,
    15,
)  # 20 training items, batch 4: 5 iterations per epoch; checkpoints every 2 iterations

# (kill, the iteration the next resume must start from); >= 2 kills inside an epoch after an
# iteration-level checkpoint (iterations 3, 7, 14), one while a checkpoint is being written, one
# after an epoch's validation but before its checkpoint, one just after an epoch boundary
KILLS = [
    (Kill("iteration", 3), 2),  # epoch 1, after the checkpoint of iteration 2
    (Kill("ckpt_write", 4), 2),  # the temporary file of checkpoint 4 written, not renamed
    (Kill("epoch_end", 1), 4),  # epoch 1 validated (best model written), its checkpoint not yet
    (Kill("iteration", 7), 6),  # epoch 2, after the checkpoint of iteration 6
    (Kill("iteration", 11), 10),  # first iteration of epoch 3: back to the end of epoch 2
    (Kill("batch", 14), 12),  # batch 14 loaded, before its model step; epoch 3 after checkpoint 12
]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault")
    config = write_tiny_config(root / "tiny.yaml", write_tiny_data(root / "data"), epochs=EPOCHS)
    reference = root / "reference"
    assert (
        run_cli(["train", "--config", str(config), "--output", str(reference)], log=root / "reference.log")
        == 0
    ), (root / "reference.log").read_text()[-3000:]
    return {"root": root, "config": config, "reference": reference}


def _resumed_from(run: Path) -> int:
    with open(run / "lilaw_iterations.csv", newline="") as f:
        return len(list(csv.DictReader(f)))


def test_sigkilled_and_resumed_run_equals_uninterrupted_run(task: dict[str, Path]) -> None:
    run, log = task["root"] / "killed", task["root"] / "killed.log"
    reference = run_record(task["reference"])
    assert [int(r["iteration"]) for r in reference["lilaw_iterations.csv"]] == list(range(1, ITERATIONS + 1))

    status = run_cli(
        ["train", "--config", str(task["config"]), "--output", str(run)], kill=KILLS[0][0], log=log
    )
    assert status == -9
    for k, (kill, _) in enumerate(KILLS):
        assert half_written_files(run) == [], f"after {kill}"
        next_kill = KILLS[k + 1][0] if k + 1 < len(KILLS) else None
        status = run_cli(["train", "--resume", str(run)], kill=next_kill, log=log)
        assert status == (-9 if next_kill else 0), log.read_text()[-3000:]

    text = log.read_text()
    for _, start in KILLS:  # each resume started from the checkpoint expected
        assert f"iteration {start}," in text
    assert "resuming" in text
    final = run_record(run)
    assert (
        differences(final, reference) == []
    )  # alpha/beta/delta, metrics, every iteration's values, dynamics
    assert json.loads((run / "summary.json").read_text())["resumed_from_iteration"] == KILLS[-1][1]
    assert half_written_files(run) == []
    assert not list(
        (run / "checkpoints").glob(".*.tmp")
    )  # the kill inside a write left one; resume removed it


def test_resume_before_any_checkpoint_starts_over(task: dict[str, Path]) -> None:
    run, log = task["root"] / "early", task["root"] / "early.log"
    kill = Kill("ckpt_write", 2)  # dies writing the very first checkpoint
    assert run_cli(["train", "--config", str(task["config"]), "--output", str(run)], kill=kill, log=log) == -9
    assert run_cli(["train", "--resume", str(run)], log=log) == 0
    assert "training starts from the beginning" in log.read_text()
    assert differences(run_record(run), run_record(task["reference"])) == []


def test_resuming_a_finished_run_trains_nothing(task: dict[str, Path]) -> None:
    log = task["root"] / "finished.log"
    before = run_record(task["reference"])
    assert run_cli(["train", "--resume", str(task["reference"])], log=log) == 0
    assert differences(run_record(task["reference"]), before) == []
    assert "SupervisedTrainer: Epoch[" not in log.read_text()  # no training epoch ran again


def test_augmented_run_resumed_mid_epoch_equals_uninterrupted_run(task: dict[str, Path]) -> None:
    """Random flips draw from the transforms' own generators: the checkpoint keeps their states too."""
    import yaml

    root = task["root"]
    cfg = yaml.safe_load(task["config"].read_text())
    cfg["data"]["options"]["flip"] = True
    cfg["train"]["epochs"] = 2
    config = root / "augmented.yaml"
    config.write_text(yaml.safe_dump(cfg))
    reference, run, log = root / "augmented_reference", root / "augmented_killed", root / "augmented.log"
    assert run_cli(["train", "--config", str(config), "--output", str(reference)], log=log) == 0
    kill = Kill("iteration", 7)  # epoch 2, after the checkpoint of iteration 6
    assert run_cli(["train", "--config", str(config), "--output", str(run)], kill=kill, log=log) == -9
    assert run_cli(["train", "--resume", str(run)], log=log) == 0
    assert differences(run_record(run), run_record(reference)) == []
