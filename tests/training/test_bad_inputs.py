"""Bad inputs end to end through ``lilaw-med train``: corrupt or missing images, bad labels and datalists,
an unusable output folder or device, a non-finite loss. Each gives a clear one-line error (exit 1, no
traceback) naming the item or file, or, with ``--skip-bad``, a completed run whose rejected list names
every bad item and its reason; nothing already written is lost."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from pydicom.data import get_testdata_file
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.handlers.nonfinite import NonFiniteLossError, NonFiniteLossHandler
from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.checkpoint_format import encode_checkpoint, find_checkpoints, read_checkpoint
from lilaw_med.training.resume import attach_checkpointing
from tests.training.fault_harness import (
    FORK_AND_PROC,
    half_written_files,
    run_cli,
    write_tiny_config,
    write_tiny_data,
)

pytestmark = pytest.mark.skipif(
    not FORK_AND_PROC, reason="forks the lilaw-med CLI and reads /proc: Linux only"
)


N_TRAIN = 8


def _pydicom_file(name: str, folder: Path) -> str:
    path = folder / name
    shutil.copy(get_testdata_file(name), path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A good tiny datalist, and one bad training item per case (id ``bad_<case>``)."""
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    datalist = write_tiny_data(data, n_train=N_TRAIN, n_val=4, n_test=2)
    bad = data / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    nan = np.ones((16, 16), np.float32)
    nan[3, 3] = np.nan
    np.save(bad / "nan.npy", nan)
    items = {
        "missing_file": {"image": "bad/does_not_exist.png", "label": 0},
        "zero_byte": {"image": "bad/empty.png", "label": 0},
        "MR_truncated": {"image": _pydicom_file("MR_truncated.dcm", bad), "label": 0},  # pixel data cut short
        "badVR": {"image": _pydicom_file("badVR.dcm", bad), "label": 0},  # an invalid value representation
        "no_meta": {"image": _pydicom_file("no_meta.dcm", bad), "label": 0},  # no file meta / DICM prefix
        "rtplan": {"image": _pydicom_file("rtplan.dcm", bad), "label": 1},  # a DICOM object without pixels
        "nan_image": {"image": "bad/nan.npy", "label": 1},
        "label_out_of_range": {"image": "img/tr000.png", "label": 5},
    }
    return {"root": root, "data": data, "good": json.loads(datalist.read_text()), "items": items}


def _datalist_with(corpus: dict[str, Any], cases: list[str], name: str) -> Path:
    d = json.loads(json.dumps(corpus["good"]))
    d["training"] += [{**corpus["items"][c], "id": f"bad_{c}", "group": f"bad_{c}"} for c in cases]
    path = corpus["data"] / f"{name}.json"
    path.write_text(json.dumps(d))
    return path


def _train(root: Path, name: str, datalist: Path, *extra: str, epochs: int = 1) -> tuple[int, str, Path]:
    config = write_tiny_config(root / f"{name}.yaml", datalist, epochs=epochs, every_n_iterations=None)
    run, log = root / f"run_{name}", root / f"{name}.log"
    status = run_cli(["train", "--config", str(config), "--output", str(run), *extra], log=log)
    return status, log.read_text(), run


def _error_line(log: str) -> str:
    lines = [ln for ln in log.splitlines() if ln.startswith("lilaw-med train: error:")]
    assert len(lines) == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return log[log.index(lines[0]) :]  # the message, with the problem lines that follow it


REASONS = {
    "missing_file": "missing file",
    "zero_byte": "not a readable image",
    "MR_truncated": "truncated",
    "badVR": "invalid image header value",
    "no_meta": "DICOM",
    "rtplan": "no image",
    "nan_image": "NaN",
    "label_out_of_range": "out of range",
}
CASES = [pytest.param(c, r, id=c) for c, r in REASONS.items()]


@pytest.mark.parametrize(("case", "reason"), CASES)
def test_bad_item_stops_train_with_a_message_naming_it(
    corpus: dict[str, Any], case: str, reason: str
) -> None:
    status, log, _ = _train(corpus["root"], case, _datalist_with(corpus, [case], case))
    assert status == 1
    message = _error_line(log)
    assert f"bad_{case}" in message and reason in message
    assert "--skip-bad" in message  # says how to go on


@pytest.mark.parametrize(
    "cases",
    [
        pytest.param([c for c in REASONS if c != "label_out_of_range"], id="bad_images"),
        pytest.param(["label_out_of_range"], id="bad_label"),
    ],
)
def test_skip_bad_completes_and_lists_every_bad_item_with_its_reason(
    corpus: dict[str, Any], cases: list[str]
) -> None:
    name = f"skip_{len(cases)}"
    status, log, run = _train(corpus["root"], name, _datalist_with(corpus, cases, name), "--skip-bad")
    assert status == 0, log[-3000:]
    with open(run / "rejected_items.csv", newline="") as f:
        rejected = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rejected) == {f"bad_{c}" for c in cases}
    for case in cases:
        assert REASONS[case] in rejected[f"bad_{case}"]["reason"], rejected[f"bad_{case}"]
        assert rejected[f"bad_{case}"]["split"] == "training"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_items"]["training"] == N_TRAIN  # every good item kept
    assert half_written_files(run) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{training: [", "not valid JSON"),
        (json.dumps({"training": [], "validation": []}), "'training' split is missing or empty"),
    ],
    ids=["not_json", "empty_training_split"],
)
def test_unusable_datalist_names_the_file(corpus: dict[str, Any], text: str, expected: str) -> None:
    path = corpus["data"] / f"broken_{len(text)}.json"
    path.write_text(text)
    for extra in ((), ("--skip-bad",)):  # nothing to skip: still an error
        status, log, _ = _train(corpus["root"], f"broken_{len(text)}_{len(extra)}", path, *extra)
        assert status == 1
        message = _error_line(log)
        assert str(path) in message and expected in message


def test_unwritable_output_folder_is_a_clear_error(corpus: dict[str, Any]) -> None:
    blocker = corpus["root"] / "a_file"
    blocker.write_text("not a folder")
    config = write_tiny_config(
        corpus["root"] / "unwritable.yaml", _datalist_with(corpus, [], "good"), epochs=1
    )
    log = corpus["root"] / "unwritable.log"
    status = run_cli(["train", "--config", str(config), "--output", str(blocker / "run")], log=log)
    assert status == 1
    assert str(blocker) in _error_line(log.read_text())


def test_full_disk_while_checkpointing_keeps_what_was_written(corpus: dict[str, Any]) -> None:
    """A file-size limit (RLIMIT_FSIZE; writes past it fail with EFBIG as a full disk fails with ENOSPC)
    that the small files and the best model (~250 kB) fit under and the training checkpoints (~770 kB)
    do not."""
    import resource
    import signal

    datalist = _datalist_with(corpus, [], "good_fsize")
    config = write_tiny_config(corpus["root"] / "fsize.yaml", datalist, epochs=1, every_n_iterations=None)
    run, log = corpus["root"] / "run_fsize", corpus["root"] / "fsize.log"

    class _Limit:  # applied in the child only, through the harness's kill hook
        kind, at = "limit", 0

        def install(self) -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, resource.RLIM_INFINITY))

    status = run_cli(["train", "--config", str(config), "--output", str(run)], kill=_Limit(), log=log)  # type: ignore[arg-type]
    assert status == 1
    message = _error_line(log.read_text())
    assert f"could not write checkpoint {run}" in message and "File too large" in message
    assert "previous checkpoints" in message and "intact" in message
    assert (run / "config.yaml").is_file() and (run / "datalist.json").is_file()
    assert half_written_files(run) == []
    assert not list(run.rglob(".*.tmp"))  # the failed write cleaned up after itself


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_gpu_is_a_clear_error(corpus: dict[str, Any]) -> None:
    status, log, run = _train(
        corpus["root"], "cuda", _datalist_with(corpus, [], "good_cuda"), "--device", "cuda"
    )
    assert status == 1
    message = _error_line(log)
    assert "cuda" in message.lower() and "--device cpu" in message


def test_non_finite_loss_through_train_stops_with_iteration_and_items(corpus: dict[str, Any]) -> None:
    datalist = _datalist_with(corpus, [], "good_nan")
    config = write_tiny_config(corpus["root"] / "diverge.yaml", datalist, epochs=2, every_n_iterations=1)
    run, log = corpus["root"] / "run_diverge", corpus["root"] / "diverge.log"
    status = run_cli(
        ["train", "--config", str(config), "--output", str(run), "--set", "optim.lr=1.0e+30"], log=log
    )
    assert status == 1
    message = _error_line(log.read_text())
    assert "the training loss is nan at iteration 2 (epoch 1)" in message
    assert "items in the batch: tr" in message  # the ids of the batch
    assert "ckpt_000000001.pt" in message  # the last good checkpoint, kept
    assert [c.iteration for c in find_checkpoints(run / "checkpoints")] == [1]
    assert half_written_files(run) == []


# ------------------------------------------------------------------ the handler itself, in-process
def test_nonfinite_handler_names_the_item_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    images = torch.randn(12, 4)
    images[7, 2] = float("nan")  # item x07: a NaN pixel that got past every check
    data = [{"image": images[i], "label": torch.tensor(i % 2), "id": f"x{i:02d}"} for i in range(12)]
    sampler = ResumableSampler(12, shuffle=False)
    loader = DataLoader(data, batch_size=3, sampler=sampler)
    net = nn.Linear(4, 2)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, decollate=False,
    )  # fmt: skip
    NonFiniteLossHandler().attach(trainer)  # finds the loss and the last checkpoint on the engine
    attach_checkpointing(trainer, tmp_path, {"network": net, "trainer": trainer}, every_n_iterations=1)
    seen: list[int] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    err = info.value
    assert (err.iteration, err.epoch) == (3, 1)  # items 6, 7, 8 form the third batch
    assert err.item_ids == ["x06", "x07", "x08"] and err.bad_item_ids == ["x07"]
    assert "items with a non-finite loss: x07" in str(err) and "iteration 3 (epoch 1)" in str(err)
    assert err.checkpoint is not None and err.checkpoint.name == "ckpt_000000002.pt"
    assert [c.iteration for c in find_checkpoints(tmp_path / "checkpoints")] == [
        2,
        1,
    ]  # nothing saved after it
    assert torch.isfinite(read_checkpoint(err.checkpoint)["objects"]["network"]["weight"]).all()
    assert isinstance(err, ValueError)  # the CLI reports ValueErrors as one-line user errors


# ------------------------------------------------------------------ hostile inputs (security)
def test_config_with_python_tags_is_refused_and_never_executed(corpus: dict[str, Any]) -> None:
    marker = corpus["root"] / "pwned"
    config = corpus["root"] / "hostile.yaml"
    config.write_text(f'data:\n  datalist: !!python/object/apply:os.system ["touch {marker}"]\n')
    log = corpus["root"] / "hostile.log"
    assert (
        run_cli(["train", "--config", str(config), "--output", str(corpus["root"] / "run_hostile")], log=log)
        == 1
    )
    assert str(config) in _error_line(log.read_text())
    assert not marker.exists()
    set_log = corpus["root"] / "hostile_set.log"
    argv = [
        "train",
        "--config",
        str(write_tiny_config(corpus["root"] / "ok.yaml", corpus["data"] / "good.json")),
    ]
    argv += [
        "--output",
        str(corpus["root"] / "run_hostile_set"),
        "--set",
        f"train.seed=__import__('os').system('touch {marker}')",
    ]
    assert run_cli(argv, log=set_log) == 1  # --set values are YAML scalars, never Python
    assert "train.seed" in _error_line(set_log.read_text())
    assert not marker.exists()


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_refused_by_weights_only_loading(corpus: dict[str, Any]) -> None:
    root = corpus["root"]
    config = write_tiny_config(root / "crafted.yaml", _datalist_with(corpus, [], "good_crafted"), epochs=2)
    run, log = root / "run_crafted", root / "crafted.log"
    assert run_cli(["train", "--config", str(config), "--output", str(run)], kill=_kill_at(3), log=log) == -9
    marker = root / "pwned_by_checkpoint"
    pickled = io.BytesIO()
    torch.save({"format": "lilaw_med.checkpoint/1", "objects": _Payload(marker)}, pickled)
    # with a valid digest of its own, so that it is the unpickling that refuses it
    (run / "checkpoints" / "ckpt_000000099.pt").write_bytes(encode_checkpoint(pickled.getvalue()))
    assert run_cli(["train", "--resume", str(run)], log=log) == 0
    assert not marker.exists()
    assert (
        "ckpt_000000099.pt is unusable" in log.read_text() and "Weights only load failed" in log.read_text()
    )
    assert (run / "checkpoints" / "ckpt_000000099.pt.corrupt").is_file()  # kept aside, never read again


def _kill_at(iteration: int) -> Any:
    from tests.training.fault_harness import Kill

    return Kill("iteration", iteration)


def test_audit_html_escapes_ids_file_names_and_class_names_from_data(corpus: dict[str, Any]) -> None:
    import re

    import yaml

    root, data = corpus["root"], corpus["data"]
    evil_dir = data / "<script>alert(1)<"  # with the file below, the path reads <script>alert(1)</script>.png
    evil_dir.mkdir()
    shutil.copy(data / "img" / "tr000.png", evil_dir / "script>.png")
    d = json.loads(json.dumps(corpus["good"]))
    for i, item in enumerate(d["training"]):
        item["id"] = f"<img src=x onerror=alert({i})>" if i % 2 else f'q{i}" onmouseover="alert({i})'
    d["training"][0]["image"] = "<script>alert(1)</script>.png"
    d["validation"][0]["id"] = "<script>alert('v')</script>"
    datalist = data / "hostile_names.json"
    datalist.write_text(json.dumps(d))
    config = write_tiny_config(root / "xss.yaml", datalist, epochs=2, every_n_iterations=None)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["class_names"] = ["<b>neg</b>", "pos<script>alert('c')</script>"]
    config.write_text(yaml.safe_dump(cfg))
    run = root / "run_xss"
    assert run_cli(["train", "--config", str(config), "--output", str(run)], log=root / "xss.log") == 0
    assert run_cli(["audit", str(run)], log=root / "xss_audit.log") == 0, (
        root / "xss_audit.log"
    ).read_text()[-2000:]
    page = (run / "audit" / "report.html").read_text()
    assert re.findall(r"<script", page, flags=re.IGNORECASE) == []  # no script element at all
    for raw in ("<img src=x", '" onmouseover="', "<b>neg</b>", "</script>"):
        assert raw not in page, raw
    assert "&lt;img src=x onerror=alert(" in page  # the ids are shown, escaped
    assert "&lt;b&gt;neg&lt;/b&gt;" in page
