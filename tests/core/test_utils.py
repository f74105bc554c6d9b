"""Atomic writes: all or nothing, readable by others, errors that name the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from lilaw_med import utils
from lilaw_med.utils import atomic_save_torch, atomic_write, atomic_writer


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


def test_atomic_writer_streams_with_atomic_writes_permissions_and_keeps_the_old_file_on_error(tmp_path):
    with atomic_writer(tmp_path / "rows.csv", "w", encoding="utf-8", newline="") as f:
        f.write("a\r\n")
        f.write("b\n")
    reference = atomic_write(tmp_path / "ref.csv", "x")
    path = tmp_path / "rows.csv"
    assert path.read_bytes() == b"a\r\nb\n"  # newline="" writes what it is given
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~utils._UMASK  # the process's umask, not 0600
    with pytest.raises(RuntimeError, match="half-way"), atomic_writer(path, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("half-way")
    assert path.read_bytes() == b"a\r\nb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.csv", "rows.csv"]
