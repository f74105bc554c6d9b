"""Checkpoints verify themselves without ``index.json``: a bit flip, a truncation or a replaced file is
found by the digest stored in the file; a loadable checkpoint whose counters or tensor shapes are wrong
is refused with one line naming the field; an oversized file is refused before it is read; the
previous good checkpoint is used instead, and no temporary file is left behind."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lilaw_med.run.checkpoint_format import (
    MAGIC,
    encode_checkpoint,
    find_checkpoints,
    load_latest_checkpoint,
    read_checkpoint,
)
from lilaw_med.training.resume import resume_from
from tests.training.fault_harness import FORK_AND_PROC, Kill, run_cli, write_tiny_config, write_tiny_data
from tests.training.test_resume import _build, _Crash, _crash_at

HEADER = len(MAGIC) + 32 + 8


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> Path:
    """A run folder with the checkpoints of iterations 6 (epoch 1) and 12 (epoch 2), killed in epoch 3."""
    run = _build(tmp_path)
    _crash_at(run, 14)
    with pytest.raises(_Crash):
        run["trainer"].run()
    assert [c.iteration for c in find_checkpoints(tmp_path / "checkpoints")] == [12, 6]
    return tmp_path


def _payload(path: Path) -> dict[str, Any]:
    return torch.load(io.BytesIO(path.read_bytes()[HEADER:]), weights_only=True)


def _rewrite(path: Path, payload: dict[str, Any]) -> None:
    """What a crafted (or buggy) writer could produce: a loadable file with a valid digest of its own."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(encode_checkpoint(buffer.getvalue()))


def _resume(folder: Path, caplog: pytest.LogCaptureFixture, **kwargs: Any) -> int:
    run = _build(folder, init_seed=3)
    with caplog.at_level(logging.WARNING, logger="lilaw_med.training.resume"):
        return resume_from(folder, run["trainer"], run["objects"], run["sampler"], **kwargs)


def test_a_bit_flip_is_found_with_the_index_deleted(two_checkpoints: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = two_checkpoints / "checkpoints"
    (folder / "index.json").unlink()
    newest = folder / "ckpt_000000012.pt"
    data = bytearray(newest.read_bytes())
    # flip one bit of an Adam exp_avg_sq value (as the probe did): torch.load alone reads the
    # file without complaint and returns the altered moment
    moment = _payload(newest)["objects"]["optimizer"]["state"][0]["exp_avg_sq"]
    at = bytes(data).find(moment.numpy().tobytes()[:64])
    assert at > HEADER
    data[at + 5] ^= 0x04
    newest.write_bytes(bytes(data))
    altered = torch.load(io.BytesIO(bytes(data[HEADER:])), weights_only=True)["objects"]["optimizer"]["state"][0]
    assert int((altered["exp_avg_sq"] != moment).sum()) == 1
    with pytest.raises(ValueError, match=r"^ckpt_000000012\.pt does not match the SHA-256 stored in it \(corrupt file\)$"):
        read_checkpoint(newest)
    assert _resume(two_checkpoints, caplog) == 6  # the previous good one
    assert "ckpt_000000012.pt is unusable (ckpt_000000012.pt does not match the SHA-256 stored in it" in caplog.text
    assert (folder / "ckpt_000000012.pt.corrupt").is_file() and not newest.exists()


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (3, r"is not a lilaw-med checkpoint \(it starts with"),  # in the magic
        (len(MAGIC) + 5, r"does not match the SHA-256 stored in it"),  # in the digest
        (len(MAGIC) + 32, r"declares a \d+-byte payload but holds \d+ bytes after its header"),  # in the length
    ],
)
def test_a_bit_flip_in_the_header_is_found(two_checkpoints: Path, offset: int, message: str) -> None:
    newest = two_checkpoints / "checkpoints" / "ckpt_000000012.pt"
    (two_checkpoints / "checkpoints" / "index.json").unlink()
    data = bytearray(newest.read_bytes())
    data[offset] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=message):
        read_checkpoint(newest)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iteration": 10**12}, "ckpt_000000012.pt: field 'iteration' is 1000000000000 but the file name says 12"),
        ({"epoch_length": 0}, "ckpt_000000012.pt: field 'epoch_length' must be a positive integer but is 0"),
        ({"epoch": 7}, "ckpt_000000012.pt: field 'epoch' is 7 but iteration 12 at 6 iterations per epoch is in epoch 2"),
        ({"batch_size": -4}, "ckpt_000000012.pt: field 'batch_size' must be a positive integer or null but is -4"),
        ({"trainer_iteration": 10**12}, "ckpt_000000012.pt: field 'objects.trainer.iteration' is 1000000000000 but"),
    ],
)
def test_malformed_counters_are_refused_with_one_line(
    two_checkpoints: Path, caplog: pytest.LogCaptureFixture, change: dict[str, int], message: str
) -> None:
    folder = two_checkpoints / "checkpoints"
    newest = folder / "ckpt_000000012.pt"
    payload = _payload(newest)
    for key, value in change.items():
        if key == "trainer_iteration":
            payload["objects"]["trainer"]["engine"]["iteration"] = value
        else:
            payload[key] = value
    _rewrite(newest, payload)
    (folder / "index.json").unlink()  # or the index's digest would give it away before its fields are read
    with pytest.raises(ValueError) as raised:
        read_checkpoint(newest)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert str(raised.value).endswith("(corrupt or crafted checkpoint)")
    assert _resume(two_checkpoints, caplog) == 6  # set aside; the run goes on from the previous good one
    assert message in caplog.text and (folder / "ckpt_000000012.pt.corrupt").is_file()
    # the only checkpoint left malformed too: one line, nothing renamed, nothing loaded
    older = folder / "ckpt_000000006.pt"
    payload = _payload(older)
    payload["epoch_length"] = 0
    _rewrite(older, payload)
    run = _build(two_checkpoints, init_seed=3)
    with pytest.raises(ValueError, match=r"^every checkpoint in .* is unusable: ckpt_000000006\.pt: field 'epoch_length'") as e:
        resume_from(two_checkpoints, run["trainer"], run["objects"], run["sampler"])
    assert "\n" not in str(e.value) and older.is_file()
    assert run["trainer"].state.iteration == 0


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("network", "network tensor '1.weight' has shape (8, 64) but this run's model has (16, 64)"),
        ("optimizer", "optimizer exp_avg_sq of parameter 0 has shape (8, 64) but the parameter has (16, 64)"),
        ("nan", "network tensor '4.bias' holds NaN or infinite values"),
    ],
)
def test_tensors_that_do_not_fit_the_model_are_refused(
    two_checkpoints: Path, caplog: pytest.LogCaptureFixture, where: str, message: str
) -> None:
    newest = two_checkpoints / "checkpoints" / "ckpt_000000012.pt"
    payload = _payload(newest)
    objects = payload["objects"]
    if where == "network":
        objects["network"]["1.weight"] = objects["network"]["1.weight"][:8]
    elif where == "optimizer":
        state = objects["optimizer"]["state"][0]
        state["exp_avg_sq"] = state["exp_avg_sq"][:8]
    else:
        objects["network"]["4.bias"][0] = float("nan")
    _rewrite(newest, payload)
    (two_checkpoints / "checkpoints" / "index.json").unlink()
    assert _resume(two_checkpoints, caplog) == 6
    assert f"ckpt_000000012.pt is unusable (ckpt_000000012.pt: {message})" in caplog.text


def test_an_oversized_checkpoint_is_refused_before_it_is_read(
    two_checkpoints: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = two_checkpoints / "checkpoints"
    (folder / "index.json").unlink()  # no recorded size: the limit comes from the model's state
    huge = folder / "ckpt_000000013.pt"
    with open(huge, "wb") as f:  # sparse: 2 GiB that take no disk space
        f.truncate(2 * 2**30)
    reads: list[int] = []
    real_open = open

    def counting_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        if Path(path) == huge:
            real_read = handle.read
            handle.read = lambda n=-1: reads.append(n) or real_read(n)  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    assert _resume(two_checkpoints, caplog) == 12
    monkeypatch.undo()
    assert reads == []  # not one byte of it was read
    assert "ckpt_000000013.pt has 2147483648 bytes, more than the" in caplog.text
    assert "train.max_checkpoint_ratio" in caplog.text
    # the limit scales: a ratio that allows it makes the reader look (and find no checkpoint in it)
    with pytest.raises(ValueError, match="not a lilaw-med checkpoint"):
        read_checkpoint(folder / "ckpt_000000013.pt.corrupt", max_bytes=3 * 2**30)


def test_no_temporary_file_is_left_and_unindexed_checkpoints_enter_the_index_with_their_digest(
    two_checkpoints: Path,
) -> None:
    folder = two_checkpoints / "checkpoints"
    index = json.loads((folder / "index.json").read_text())
    index["checkpoints"] = [e for e in index["checkpoints"] if e["file"] != "ckpt_000000012.pt"]
    (folder / "index.json").write_text(json.dumps(index))  # killed between the checkpoint and the index
    (folder / ".index.json.k3j2.tmp").write_bytes(b"")  # killed inside the index's atomic write
    (folder / ".ckpt_000000014.pt.x9.tmp").write_bytes(b"\0" * 10)
    run = _build(two_checkpoints)
    assert resume_from(two_checkpoints, run["trainer"], run["objects"], run["sampler"]) == 12
    run["trainer"].run()
    assert not list(folder.glob(".*")) and not list(two_checkpoints.rglob("*.tmp"))
    entries = {e["file"]: e for e in json.loads((folder / "index.json").read_text())["checkpoints"]}
    assert set(entries) == {"ckpt_000000012.pt", "ckpt_000000018.pt"}
    for name, entry in entries.items():
        data = (folder / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data[HEADER:]).hexdigest() == data[len(MAGIC) : len(MAGIC) + 32].hex()
        assert entry["bytes"] == len(data)


def test_a_bare_torch_save_file_is_refused_even_when_the_index_vouches_for_it(two_checkpoints: Path) -> None:
    folder = two_checkpoints / "checkpoints"
    newest = folder / "ckpt_000000012.pt"
    bare = newest.read_bytes()[HEADER:]  # the payload without the header that carries its digest
    newest.write_bytes(bare)
    index = json.loads((folder / "index.json").read_text())
    for entry in index["checkpoints"]:
        if entry["file"] == newest.name:
            entry.update(bytes=len(bare), sha256=hashlib.sha256(bare).hexdigest())
    (folder / "index.json").write_text(json.dumps(index))
    info, ckpt, rejected = load_latest_checkpoint(folder)
    assert (info.iteration, ckpt["iteration"]) == (6, 6)
    assert [(r.iteration, "is not a lilaw-med checkpoint (it starts with b'PK" in why) for r, why in rejected] == [(12, True)]


@pytest.mark.skipif(not FORK_AND_PROC, reason="forks the lilaw-med CLI: Linux only")
def test_resume_of_a_crafted_checkpoint_is_one_line_through_the_cli(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "tiny.yaml", write_tiny_data(tmp_path / "data"), epochs=2)
    run, log = tmp_path / "run", tmp_path / "train.log"
    assert run_cli(["train", "--config", str(config), "-o", str(run)], kill=Kill("iteration", 3), log=log) == -9
    only = run / "checkpoints" / "ckpt_000000002.pt"
    assert [c.path for c in find_checkpoints(run / "checkpoints")] == [only]
    payload = _payload(only)
    payload["epoch_length"] = 0
    _rewrite(only, payload)
    index = json.loads((run / "checkpoints" / "index.json").read_text())  # the crafter fixes the index too
    data = only.read_bytes()
    index["checkpoints"][0].update(bytes=len(data), sha256=hashlib.sha256(data[HEADER:]).hexdigest())
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))
    log = tmp_path / "resume.log"
    assert run_cli(["train", "--resume", str(run)], log=log) == 1
    text = log.read_text()
    errors = [line for line in text.splitlines() if "error" in line]
    assert "Traceback" not in text and len(errors) == 1
    assert errors[0].startswith(f"lilaw-med train: error: every checkpoint in {run / 'checkpoints'} is unusable: ")
    assert "ckpt_000000002.pt: field 'epoch_length' must be a positive integer but is 0" in errors[0]


def test_checkpoint_of_another_number_of_processes_is_refused(two_checkpoints: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = two_checkpoints / "checkpoints"
    for info in find_checkpoints(folder):  # as if a 2-process run had written them
        payload = _payload(info.path)
        assert payload["world_size"] == 1 and payload["ranks"][0]["rank"] == 0
        payload["ranks"] = [payload["ranks"][0], {**payload["ranks"][0], "rank": 1}]
        payload["world_size"] = 2
        _rewrite(info.path, payload)
    (folder / "index.json").unlink()
    with pytest.raises(ValueError, match=(
        r"^checkpoint ckpt_000000012\.pt was written by 2 process\(es\) but this run has 1: resume with the same "
        r"number \(torchrun --nproc_per_node 2\), or start a new run\.$"
    )):
        _resume(two_checkpoints, caplog)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(world_size=0), "field 'world_size' must be a positive integer but is 0"),
        (lambda p: p.update(world_size=2), "field 'ranks' must list the states of 2 process(es) but holds 1"),
        (lambda p: p["ranks"][0].update(rank=3), "field 'ranks[0]' must be the state of rank 0"),
        (lambda p: p["ranks"][0].update(rng=[1]), "field 'ranks[0].rng' must map names to saved states"),
    ],
    ids=["world_size", "count", "rank", "rng"],
)
def test_malformed_per_rank_states_are_one_line(two_checkpoints: Path, edit: Any, message: str) -> None:
    newest = two_checkpoints / "checkpoints" / "ckpt_000000012.pt"
    payload = _payload(newest)
    edit(payload)
    _rewrite(newest, payload)
    with pytest.raises(ValueError, match=re.escape(f"ckpt_000000012.pt: {message}")):
        read_checkpoint(newest)


def test_the_checkpoint_format_reads_without_ignite_or_monai(two_checkpoints: Path) -> None:
    # the bottom layer: a checkpoint is read, verified and listed by a process that has neither
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ignite', 'monai'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lilaw_med.run.checkpoint_format import load_latest_checkpoint\n"
        "info, ckpt, rejected = load_latest_checkpoint(sys.argv[1])\n"
        "print(info.iteration, ckpt['epoch'], len(rejected))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(two_checkpoints / "checkpoints")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12", "2", "0"]
