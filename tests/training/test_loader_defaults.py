"""Loader defaults: how ``train.num_workers: auto`` resolves, which pools persist, what the meta step reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lilaw_med.data.datalist import Datalist
from lilaw_med.run.config import Config, ConfigError
from lilaw_med.training.data import AUTO_WORKERS_MAX, build_data, resolve_num_workers


@pytest.mark.parametrize(
    ("cores", "ranks", "items", "expected"),
    [
        (2, 1, 5000, 2),  # this CI machine: both cores
        (16, 1, 5000, AUTO_WORKERS_MAX),  # capped
        (16, 4, 5000, 4),  # four ranks on the node share its cores
        (16, 16, 5000, 0),  # one core per rank: decoding stays in the process
        (1, 1, 5000, 0),
        (16, 1, 999, 0),  # a small training split: starting workers costs more than it saves
        (16, 1, 1000, AUTO_WORKERS_MAX),
    ],
)
def test_auto_workers_resolve_from_cores_ranks_and_items(cores: int, ranks: int, items: int, expected: int) -> None:
    assert resolve_num_workers("auto", items, ranks_per_node=ranks, cores=cores) == expected


def test_a_number_of_workers_is_taken_as_given_and_auto_is_the_default() -> None:
    assert resolve_num_workers(3, 10, cores=1) == 3
    assert resolve_num_workers(0, 10**6, cores=64) == 0
    assert Config.from_mapping({"data": {"sample_data": True}}).train.num_workers == "auto"
    assert Config.from_mapping({"data": {"sample_data": True}, "train": {"num_workers": 4}}).train.num_workers == 4
    with pytest.raises(ConfigError, match=r"'train.num_workers' must be a number or one of \['auto'\]"):
        Config.from_mapping({"data": {"sample_data": True}, "train": {"num_workers": "many"}})
    with pytest.raises(ConfigError, match="train.num_workers"):
        Config.from_mapping({"data": {"sample_data": True}, "train": {"num_workers": -1}})


def _datalist(folder: Path, n: int) -> Datalist:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
        items.append({"id": str(i), "image": str(folder / f"{i}.png"), "label": i % 2, "group": None})
    return Datalist(training=items[: n - 4], validation=items[n - 4 : n - 2], test=items[n - 2 :], class_names=["a", "b"])


def test_meta_step_reads_the_validation_dataset_and_only_training_pools_persist(tmp_path: Path) -> None:
    cfg = Config.from_mapping(
        {"data": {"datalist": "x.json", "cache": "memory", "options": {"spatial_size": [8, 8]}},
         "train": {"num_workers": 2}}
    )  # fmt: skip
    data = build_data(cfg, _datalist(tmp_path, 10), None, torch.device("cpu"))
    assert data.meta_loader.dataset is data.val_loader.dataset
    assert data.train_loader.num_workers == 2 and data.train_loader.persistent_workers
    assert data.meta_loader.persistent_workers
    assert not data.val_loader.persistent_workers and not data.test_loader.persistent_workers
    assert not data.train_loader.pin_memory  # CPU


def test_batches_with_workers_are_the_same_for_the_same_seed(tmp_path: Path) -> None:
    dl = _datalist(tmp_path, 12)
    cfg = Config.from_mapping(
        {"data": {"datalist": "x.json", "options": {"spatial_size": [8, 8], "flip": True, "rotate90": True}},
         "train": {"num_workers": 2, "batch_size": 4, "seed": 5}}
    )  # fmt: skip

    def first_epoch() -> list[torch.Tensor]:
        loader = build_data(cfg, dl, None, torch.device("cpu")).train_loader
        return [torch.as_tensor(batch["image"]).clone() for batch in loader]

    a, b = first_epoch(), first_epoch()
    assert len(a) == 2
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
