"""Atomic writes: all or nothing, readable by others, errors that name the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from lilaw_med.utils import atomic_save_torch, atomic_write


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write(target, "old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_atomic_write_honours_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.csv", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # group/others may read


def test_atomic_write_failure_names_the_file_and_keeps_the_old_one(tmp_path):
    blocker = atomic_write(tmp_path / "keep.txt", "precious")
    with pytest.raises(OSError, match=r"cannot write .*keep.txt/child.txt"):
        atomic_write(blocker / "child.txt", "y")  # its folder is a file: nothing can be written
    assert blocker.read_text() == "precious"


def test_atomic_save_torch_round_trips_with_weights_only(tmp_path):
    path = atomic_save_torch({"w": torch.arange(3.0), "step": 4}, tmp_path / "ckpt.pt")
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 4 and torch.equal(loaded["w"], torch.arange(3.0))
