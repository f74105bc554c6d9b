"""ResumableSampler and the RNG capture: the pieces that make a resumed epoch continue exactly."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.rng import capture_rng_state, restore_rng_state


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    a.set_epoch(4)
    list(ResumableSampler(50, seed=3))  # other samplers, other draws: no shared state
    torch.rand(10)
    b.set_epoch(4)
    assert list(a) == list(b) == list(a)  # iterating twice gives the same order
    assert sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(ResumableSampler(50, seed=4)) != list(ResumableSampler(50, seed=3))
    assert list(ResumableSampler(7, shuffle=False)) == list(range(7))


def test_set_start_skips_the_consumed_samples_once() -> None:
    s = ResumableSampler(23, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_start(8)
    s.set_epoch(2)  # MONAI calls set_epoch at EPOCH_STARTED of the resumed epoch: the start must survive it
    assert list(s) == full[8:]
    assert list(s) == full  # later iterators start at 0 again
    assert len(s) == 23  # ignite's epoch_length stays the full epoch
    s.set_start(23)
    assert list(s) == []
    with pytest.raises(ValueError, match=r"start index must lie in \[0, 23\]"):
        s.set_start(24)


@pytest.mark.parametrize(
    ("length", "world_size", "drop_last"), [(10, 3, False), (10, 3, True), (9, 3, False), (5, 4, False)]
)
def test_partitions_like_distributed_sampler(length: int, world_size: int, drop_last: bool) -> None:
    seen = []
    for rank in range(world_size):
        ours = ResumableSampler(length, seed=2, rank=rank, world_size=world_size, drop_last=drop_last)
        ref = DistributedSampler(
            range(length), num_replicas=world_size, rank=rank, seed=2, drop_last=drop_last
        )
        ours.set_epoch(3)
        ref.set_epoch(3)
        assert list(ours) == list(ref)
        assert len(ours) == len(ref)
        seen += list(ours)
    if not drop_last:
        assert set(seen) == set(range(length))  # padding repeats items, never loses one


def test_state_dict_round_trip_and_mismatch_is_an_error() -> None:
    s = ResumableSampler(12, seed=9)
    s.set_epoch(3)
    s.set_start(4)
    t = ResumableSampler(12, seed=9)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s)
    with pytest.raises(ValueError, match="the checkpoint has length=12 but this run has length=13"):
        ResumableSampler(13, seed=9).load_state_dict(s.state_dict())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="length must be a positive"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, 2\)"):
        ResumableSampler(4, rank=2, world_size=2)


def test_rng_capture_is_tensors_only_and_restores_every_generator(tmp_path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = capture_rng_state()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])


def test_loader_rng_capture_restores_generator_and_random_transforms() -> None:
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandAffined, RandFlipd

    from lilaw_med.rng import capture_loader_rng_state, restore_loader_rng_state

    items = [{"image": torch.arange(16.0).reshape(1, 4, 4) + i} for i in range(6)]
    transform = Compose(
        [RandFlipd("image", prob=0.5, spatial_axis=0), RandAffined("image", prob=0.5, rotate_range=1.0)]
    )
    loader = DataLoader(Dataset(items, transform), batch_size=2, generator=torch.Generator().manual_seed(3))
    state = capture_loader_rng_state(loader)
    assert (
        state["transform_keys"].shape[0] >= 3
    )  # the Compose, the flip, the affine (and its inner random parts)
    first = [b["image"].clone() for b in loader]
    restore_loader_rng_state(loader, torch.load(_roundtrip(state), weights_only=True))
    again = [b["image"] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, [b["image"] for b in loader], strict=True))


def _roundtrip(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
