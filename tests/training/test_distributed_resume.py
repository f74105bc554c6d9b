"""A 2-process (gloo, CPU) ``lilaw-med train`` SIGKILLed inside an epoch and resumed with ``--resume``
ends exactly as the uninterrupted 2-process run: weights, metrics, per-iteration LiLAW values and the
dynamics of every item, both ranks' shares of the interrupted epoch included.

The ranks are children forked from the test process (``fault_harness.run_cli_ranks``: the environment
torchrun would set, then ``lilaw_med.cli.main``). Every rank gets its own random streams
(``RankSeeds``), so dropout differs between ranks and a resume that gave rank 1 rank 0's random state
would train other weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.fault_harness import (
    FORK_AND_PROC,
    Hooks,
    Kill,
    RankSeeds,
    differences,
    half_written_files,
    run_cli_ranks,
    run_record,
    write_tiny_config,
    write_tiny_data,
)

pytestmark = pytest.mark.skipif(
    not FORK_AND_PROC or not torch.distributed.is_available(), reason="forks gloo ranks (Linux)"
)

WORLD_SIZE, N_TRAIN, N_VAL = 2, 23, 8  # 23: the sampler pads one item, so one item is seen twice
ITERS_PER_EPOCH, EPOCHS = 3, 2  # ceil(ceil(23 / 2) / 4)
KILL_AT = 5  # killed as iteration 5's batch arrives: resumed from the checkpoint of iteration 4, mid epoch 2


def _network_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from lilaw_med.run.checkpoint_format import find_checkpoints, read_checkpoint

    newest = find_checkpoints(run_dir / "checkpoints")[0]
    return read_checkpoint(newest)["objects"]["network"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ddp_resume")
    datalist = write_tiny_data(root / "data", n_train=N_TRAIN, n_val=N_VAL, n_test=4)
    config = write_tiny_config(root / "tiny.yaml", datalist, epochs=EPOCHS, every_n_iterations=2)
    seeds = RankSeeds()
    full, cut = root / "full", root / "cut"
    status = run_cli_ranks(
        ["train", "--config", str(config), "-o", str(full)], WORLD_SIZE, seeds, root / "full.log"
    )
    assert status == [0, 0], (root / "full.log.rank0").read_text()[-3000:]
    argv = ["train", "--config", str(config), "-o", str(cut)]
    killed = run_cli_ranks(argv, WORLD_SIZE, Hooks((seeds, Kill("batch", KILL_AT))), root / "cut.log")
    assert killed == [-9, -9], (root / "cut.log.rank0").read_text()[-3000:]
    from lilaw_med.run.checkpoint_format import find_checkpoints, read_checkpoint

    newest = find_checkpoints(cut / "checkpoints")[0]
    interrupted = read_checkpoint(newest)
    status = run_cli_ranks(["train", "--resume", str(cut)], WORLD_SIZE, seeds, root / "resume.log")
    assert status == [0, 0], (root / "resume.log.rank0").read_text()[-3000:]
    return {"full": full, "cut": cut, "interrupted": interrupted, "root": root}


def test_checkpoint_holds_each_ranks_own_state(runs: dict[str, Any]) -> None:
    ckpt = runs["interrupted"]
    assert ckpt["iteration"] == KILL_AT - 1 and (KILL_AT - 1) % ITERS_PER_EPOCH  # inside an epoch
    assert ckpt["world_size"] == WORLD_SIZE and [r["rank"] for r in ckpt["ranks"]] == [0, 1]
    in_epoch = (KILL_AT - 1) % ITERS_PER_EPOCH
    for r, entry in enumerate(ckpt["ranks"]):
        dyn = entry["objects"]["dynamics"]
        assert dyn["rank"] == r
        # each rank holds the items of its own batches of the interrupted epoch: 4 per iteration
        assert int(dyn["buffers"]["training"]["counts"].sum()) == in_epoch * 4
        assert int(dyn["buffers"]["validation"]["counts"].sum()) == in_epoch * 4
        assert entry["sampler"]["rank"] == r and entry["sampler"]["world_size"] == WORLD_SIZE
    train0, train1 = (e["objects"]["dynamics"]["buffers"]["training"]["counts"] for e in ckpt["ranks"])
    assert not bool(((train0 > 0) & (train1 > 0)).any()), "the ranks' shards overlap"
    # RankSeeds gave the ranks different streams: both must be kept
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])


def test_resumed_distributed_run_equals_the_uninterrupted_one(runs: dict[str, Any]) -> None:
    full, cut = run_record(runs["full"]), run_record(runs["cut"])
    import json

    assert json.loads((runs["cut"] / "summary.json").read_text())["resumed_from_iteration"] == KILL_AT - 1
    diffs = differences(full, cut)
    assert not diffs, diffs[:20]  # summary, metrics.csv, lilaw_iterations.csv, every dynamics array
    a, b = _network_state(runs["full"]), _network_state(runs["cut"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not half_written_files(runs["cut"])


def test_interrupted_epoch_dynamics_count_every_item_of_both_ranks(runs: dict[str, Any]) -> None:
    from lilaw_med.run.dynamics_format import load_dynamics

    for split, n in (("training", N_TRAIN), ("validation", N_VAL)):
        dyn = load_dynamics(runs["cut"], split)
        assert dyn.epochs == list(range(1, EPOCHS + 1))
        counts = dyn["count"]
        # every rank's batch of every iteration recorded: 3 iterations x 2 ranks x 4 items per epoch
        np.testing.assert_array_equal(counts.sum(axis=1), ITERS_PER_EPOCH * WORLD_SIZE * 4)
        if split == "training":
            assert (counts >= 1).all(), "items with count 0 in an epoch"
            assert not np.isnan(dyn["prob_label"]).any() and not np.isnan(dyn["probs"]).any()
        assert len(dyn.ids) == n
