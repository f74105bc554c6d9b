"""Per-epoch validation sharded across ranks: each rank infers on positions ``rank::world_size`` of the
split (nothing padded or repeated), the shards are gathered and put back in order, and every rank's
metrics are those of one process over the whole split.

The unit tests pass rank and world size explicitly and stand in for the gather by handing every
shard to :func:`merge_shards`; the 2-process gloo test runs the real collectives over the loaders
that :func:`build_data` makes, with a network whose outputs do not depend on the batch an item is in
(batch norm in eval mode, average pooling), so the metrics can be compared exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med.data.datalist import Datalist
from lilaw_med.data.dataset import shard_indices
from lilaw_med.run.config import Config
from lilaw_med.training import distributed as D
from lilaw_med.training.data import build_data
from lilaw_med.training.evaluation import classification_metrics, run_inference
from lilaw_med.training.validation import SCALAR_METRICS, EpochValidation, merge_shards
from tests.torchrun import free_port, run_processes

WORLD_SIZE = 2
N_VAL, N_TEST = 11, 5  # neither a multiple of the world size: the last shard is one item short
TIMEOUT_S = 120.0


def _logit_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [{"image": logits[i], "label": labels[i], "id": f"v{i:02d}"} for i in range(n)]


@pytest.mark.parametrize(("n", "world"), [(11, 2), (11, 3), (11, 4), (2, 3)])
def test_merged_shards_give_the_single_process_order_and_metrics(n: int, world: int) -> None:
    items = _logit_items(n)
    network = nn.Identity()  # the "image" is the item's logits: a batch cannot change them
    single = run_inference(network, DataLoader(items, batch_size=4), "cpu")
    shards = [
        run_inference(network, DataLoader(items, batch_size=3, sampler=shard_indices(n, r, world)), "cpu")
        for r in range(world)
    ]
    assert sum(len(s[2]) for s in shards) == n  # no item padded or repeated
    logits, labels, ids = merge_shards([s[0] for s in shards], [s[1] for s in shards], [s[2] for s in shards])
    assert ids == single[2] == [f"v{i:02d}" for i in range(n)]
    assert torch.equal(logits, single[0]) and torch.equal(labels, single[1])
    np.testing.assert_equal(classification_metrics(logits, labels), classification_metrics(single[0], single[1]))


def test_merge_rejects_shards_that_are_not_rank_strided() -> None:
    logits = torch.randn(4, 3)
    # 4 items dealt 3 + 1 (a contiguous split, not rank::world): rank 0 must hold positions 0 and 2 only
    with pytest.raises(ValueError, match=r"rank 0's validation shard holds 3 item\(s\) .* of 4 items are 2"):
        merge_shards([logits[:3], logits[3:]], [None, None], [["a", "b", "c"], ["d"]])
    with pytest.raises(ValueError, match="one shard per rank"):
        merge_shards([logits[:2], logits[2:]], [None], [["a", "b"], ["c", "d"]])


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(8 + N_VAL + N_TEST):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")


def _datalist(folder: Path) -> Datalist:
    # reads only: the ranks share the folder, and a rank rewriting an image another is reading breaks it
    items = [
        {"id": f"i{i:02d}", "image": str(folder / f"{i}.png"), "label": i % 2, "group": None}
        for i in range(8 + N_VAL + N_TEST)
    ]
    return Datalist(
        training=items[:8], validation=items[8 : 8 + N_VAL], test=items[8 + N_VAL :], class_names=["a", "b"]
    )


def _config() -> Config:
    return Config.from_mapping(
        {"data": {"datalist": "unused.json", "cache": "memory", "options": {"spatial_size": [8, 8]}},
         "train": {"num_workers": 0, "batch_size": 3}}
    )  # fmt: skip


def test_build_data_gives_each_rank_its_shard_and_one_process_the_whole_split(tmp_path: Path) -> None:
    _write_images(tmp_path)
    dl, cfg = _datalist(tmp_path), _config()
    for rank in range(WORLD_SIZE):
        data = build_data(cfg, dl, None, torch.device("cpu"), rank=rank, world_size=WORLD_SIZE)
        assert list(data.epoch_val_loader.sampler) == shard_indices(N_VAL, rank, WORLD_SIZE)
        assert list(data.epoch_test_loader.sampler) == shard_indices(N_TEST, rank, WORLD_SIZE)
        # the shard evaluated is the shard cached, and the final evaluation still reads the whole split
        assert set(data.epoch_val_loader.sampler) == set(data.epoch_val_loader.dataset.positions)
        assert len(list(data.val_loader.sampler)) == N_VAL
    single = build_data(cfg, dl, None, torch.device("cpu"))
    assert single.epoch_val_loader is single.val_loader and single.epoch_test_loader is single.test_loader


class _Recording:
    """A loader that remembers the ids of the batches the validation pass took from it."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.ids = loader, []

    def __iter__(self) -> Any:
        for batch in self.loader:
            self.ids.extend(str(i) for i in batch["id"])
            yield batch


def _network(rank: int) -> nn.Module:
    net = nn.Sequential(nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        if rank:  # another rank's running statistics: the pass must use rank 0's (broadcast first)
            net[0].running_mean.fill_(5.0)
    return net


def _validate(folder: Path, out: Path | None, rank: int, world_size: int) -> dict[str, Any]:
    data = build_data(_config(), _datalist(folder), None, torch.device("cpu"), rank=rank, world_size=world_size)
    val, test = _Recording(data.epoch_val_loader), _Recording(data.epoch_test_loader)
    best = out / "best.pt" if out is not None and rank == 0 else None
    validation = EpochValidation(
        _network(rank), val, torch.device("cpu"), key_metric="auroc", best_path=best, test_loader=test,
        class_names=["a", "b"], world_size=world_size,
    )  # fmt: skip
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.max_epochs = 1, 1
    validation(engine)
    cached = {it["id"] for it in data.epoch_val_loader.dataset.cache.data} if world_size > 1 else None
    return {"metrics": dict(engine.state.metrics), "val_ids": val.ids, "test_ids": test.ids, "cached": cached,
            "state": validation.state_dict()}  # fmt: skip


def _worker(rank: int, port: int, folder: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    context = D.init_distributed(device="cpu", environ=env, timeout_s=60)
    try:
        torch.save(_validate(Path(folder), Path(out_dir), rank, WORLD_SIZE), Path(out_dir) / f"rank{rank}.pt")
    finally:
        D.cleanup_distributed(context)


def test_two_gloo_ranks_validate_their_shards_and_agree_with_one_process(tmp_path: Path) -> None:
    assert not D.is_distributed()
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    _write_images(folder)
    run_processes(_worker, (free_port(), str(folder), str(out)), WORLD_SIZE, TIMEOUT_S, "2-process validation")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    single = _validate(folder, None, 0, 1)

    val_ids = [f"i{i:02d}" for i in range(8, 8 + N_VAL)]
    test_ids = [f"i{i:02d}" for i in range(8 + N_VAL, 8 + N_VAL + N_TEST)]
    assert single["val_ids"] == val_ids and single["test_ids"] == test_ids
    for r, result in enumerate(ranks):
        # each rank's pass read only its shard, which is the shard it cached
        assert result["val_ids"] == val_ids[r::WORLD_SIZE]
        assert result["test_ids"] == test_ids[r::WORLD_SIZE]
        assert result["cached"] == set(val_ids[r::WORLD_SIZE])
        # the gathered metrics: rank 0's network over the whole split, as one process computes them
        assert result["metrics"] == single["metrics"], f"rank {r}"
        assert result["state"] == single["state"]
    assert {f"{s}_{m}" for s in ("val", "test") for m in SCALAR_METRICS} <= set(single["metrics"])
    assert 0.0 < single["metrics"]["val_auroc"] < 1.0 and not math.isnan(single["metrics"]["test_loss"])
    saved = torch.load(out / "best.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["metric"] == single["metrics"]["val_auroc"]
