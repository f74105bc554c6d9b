"""Resume equals uninterrupted: a MONAI SupervisedTrainer with LiLAW, killed (an exception) at chosen
iterations and resumed from its atomic checkpoints, ends bit-identical to a run that never stopped."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.losses import LiLAWLoss
from lilaw_med.run.checkpoint_format import find_checkpoints, read_checkpoint
from lilaw_med.training.resume import attach_checkpointing, resume_from, run_is_complete

N_TRAIN, N_VAL, BATCH, EPOCHS = 22, 10, 4, 3  # 6 iterations per epoch, the last batch partial (2)
EPOCH_LENGTH = 6


class _Items(Dataset):
    """Tiny in-memory items (image (1, 8, 8), label, id), learnable with some flipped labels."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, 8, 8, generator=g)
        labels = (self.images.mean(dim=(1, 2, 3)) > 0).long()
        flip = torch.rand(n, generator=g) < 0.25
        self.labels = torch.where(flip, 1 - labels, labels)
        self.ids = [f"s{seed}-{i:03d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "id": self.ids[i]}


class _Recorder:
    """A stateful handler (as a run logger would be): per-iteration (iteration, ids, loss, alpha) and
    per-epoch metrics of the network on a fixed set; all of it is checkpointed."""

    def __init__(self, eval_set: _Items, loss: LiLAWLoss) -> None:
        self.eval_set, self.loss = eval_set, loss
        self.iterations: list[tuple[int, tuple[str, ...], float, float]] = []
        self.epochs: list[tuple[int, float, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _iteration(self, engine: Engine) -> None:
        w = self.loss.weighting
        self.iterations.append(
            (
                engine.state.iteration,
                tuple(engine.state.batch["id"]),
                engine.state.output["loss"].item(),
                w.alpha.item(),
            )
        )

    def _epoch(self, engine: Engine) -> None:
        net = engine.network
        net.eval()
        with torch.no_grad():
            logits = net(self.eval_set.images)
        net.train()
        ce = nn.functional.cross_entropy(logits, self.eval_set.labels).item()
        acc = (logits.argmax(1) == self.eval_set.labels).float().mean().item()
        self.epochs.append((engine.state.epoch, ce, acc))

    def state_dict(self) -> dict[str, Any]:
        return {
            "iterations": [list(r[:1]) + [list(r[1])] + list(r[2:]) for r in self.iterations],
            "epochs": [list(r) for r in self.epochs],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iterations = [(r[0], tuple(r[1]), r[2], r[3]) for r in state["iterations"]]
        self.epochs = [tuple(r) for r in state["epochs"]]


class _Crash(Exception):
    """Stands for a SIGKILL: the process stops at once, nothing after it runs."""


def _build(
    run_dir: Path,
    init_seed: int = 0,
    every_n_iterations: int | None = None,
    max_epochs: int = EPOCHS,
    amp: bool = False,
):
    torch.manual_seed(init_seed)  # a resumed build starts from other weights: the checkpoint must win
    train, val = _Items(N_TRAIN, 1), _Items(N_VAL, 2)
    sampler = ResumableSampler(len(train), seed=5)
    loader = DataLoader(train, batch_size=BATCH, sampler=sampler)
    val_loader = DataLoader(val, batch_size=4, sampler=ResumableSampler(len(val), seed=6))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=loss,
        decollate=False,
        amp=amp,
        train_handlers=[LrScheduleHandler(sched, print_lr=False)],
    )
    lilaw = LiLAWHandler(val_loader, loss)
    lilaw.attach(trainer)
    recorder = _Recorder(val, loss)
    objects = {
        "network": net,
        "optimizer": opt,
        "scheduler": sched,
        "lilaw": lilaw,
        "trainer": trainer,
        "recorder": recorder,
    }
    ckpt = attach_checkpointing(
        trainer, run_dir, objects, every_n_iterations=every_n_iterations, every_n_epochs=1
    )
    recorder.attach(trainer)  # attached after the checkpoint handler on purpose: it must still run first
    executed: list[int] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: executed.append(e.state.iteration))
    return {
        "trainer": trainer,
        "objects": objects,
        "sampler": sampler,
        "net": net,
        "loss": loss,
        "recorder": recorder,
        "lilaw": lilaw,
        "executed": executed,
        "ckpt": ckpt,
    }


def _crash_at(run: dict, iteration: int) -> None:
    def crash(engine: Engine) -> None:
        if engine.state.iteration == iteration:
            raise _Crash(iteration)

    run["trainer"].add_event_handler(Events.ITERATION_COMPLETED, crash)


def _final(run: dict) -> dict[str, Any]:
    w = run["loss"].weighting
    return {
        "params": {k: v.clone() for k, v in run["net"].state_dict().items()},
        "abd": (w.alpha.item(), w.beta.item(), w.delta.item()),
        "iterations": list(run["recorder"].iterations),
        "epochs": list(run["recorder"].epochs),
        "lr": run["objects"]["optimizer"].param_groups[0]["lr"],
        "meta_steps": run["lilaw"].steps,
        "trainer_iteration": run["trainer"].state.iteration,
    }


def _assert_same(resumed: dict, reference: dict) -> None:
    assert resumed["abd"] == reference["abd"]  # exactly equal floats
    assert resumed["iterations"] == reference["iterations"]  # ids, losses, alpha of every iteration
    assert resumed["epochs"] == reference["epochs"]
    assert resumed["lr"] == reference["lr"]
    assert resumed["meta_steps"] == reference["meta_steps"]
    assert resumed["trainer_iteration"] == reference["trainer_iteration"]
    for k, v in reference["params"].items():
        assert torch.equal(resumed["params"][k], v), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    run = _build(tmp_path_factory.mktemp("reference"), every_n_iterations=4)
    run["trainer"].run()
    out = _final(run)
    # every item seen exactly once per epoch, no iteration twice
    its = [r[0] for r in out["iterations"]]
    assert its == list(range(1, EPOCHS * EPOCH_LENGTH + 1))
    for e in range(EPOCHS):
        ids = [i for r in out["iterations"][e * EPOCH_LENGTH : (e + 1) * EPOCH_LENGTH] for i in r[1]]
        assert sorted(ids) == sorted(f"s1-{i:03d}" for i in range(N_TRAIN))
    assert out["meta_steps"] == EPOCHS * EPOCH_LENGTH
    return out


def _interrupted_then_resumed(
    tmp_path: Path, crashes: list[int], every_n_iterations: int | None
) -> tuple[dict, list]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    resumed_from = []
    run = _build(tmp_path, every_n_iterations=every_n_iterations)
    _crash_at(run, crashes[0])
    with pytest.raises(_Crash):
        run["trainer"].run()
    for k, crash in enumerate([*crashes[1:], None]):
        # the killed process's RNG states are gone too: scramble them before resuming
        torch.manual_seed(1234 + k)
        random.seed(99)
        np.random.seed(7)
        run = _build(tmp_path, init_seed=100 + k, every_n_iterations=every_n_iterations)
        start = resume_from(tmp_path, run["trainer"], run["objects"], run["sampler"])
        resumed_from.append(start)
        if crash is not None:
            _crash_at(run, crash)
            with pytest.raises(_Crash):
                run["trainer"].run()
        else:
            run["trainer"].run()
            # the resumed process ran exactly the missing iterations, once each
            assert run["executed"] == list(range(start + 1, EPOCHS * EPOCH_LENGTH + 1))
    return _final(run), resumed_from


@pytest.mark.parametrize(
    ("crashes", "every_n_iterations", "expected_starts"),
    [
        ([8], None, [6]),  # epoch-level checkpoint, killed inside epoch 2
        ([11], 4, [8]),  # iteration-level checkpoint inside epoch 2 (2 of 6 batches done)
        ([13], 4, [12]),  # iteration 12 ends epoch 2: its checkpoint waits for EPOCH_COMPLETED
        ([6, 11, 17], 4, [4, 8, 16]),  # killed three times, twice mid-epoch (1 and 3)
    ],
)
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path,
    reference: dict,
    crashes: list[int],
    every_n_iterations: int | None,
    expected_starts: list[int],
) -> None:
    final, starts = _interrupted_then_resumed(tmp_path, crashes, every_n_iterations)
    assert starts == expected_starts
    _assert_same(final, reference)


def test_corrupt_newest_checkpoint_falls_back_to_previous_with_a_message(
    tmp_path: Path, reference: dict, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    run = _build(tmp_path, every_n_iterations=4)
    _crash_at(run, 11)
    with pytest.raises(_Crash):
        run["trainer"].run()
    newest = find_checkpoints(tmp_path / "checkpoints")[0]
    assert newest.iteration == 8
    data = newest.path.read_bytes()
    newest.path.write_bytes(data[: len(data) // 2])  # a torn write by something other than us

    run = _build(tmp_path, init_seed=3, every_n_iterations=4)
    with caplog.at_level(logging.WARNING, logger="lilaw_med.training.resume"):
        start = resume_from(tmp_path, run["trainer"], run["objects"], run["sampler"])
    assert start == 6  # the epoch-1 checkpoint: 4 was pruned (keep_last=2)
    assert "ckpt_000000008.pt is unusable" in caplog.text and "truncated" in caplog.text
    assert (tmp_path / "checkpoints" / "ckpt_000000008.pt.corrupt").is_file()
    run["trainer"].run()
    _assert_same(_final(run), reference)


def test_checkpoints_are_atomic_pruned_and_load_with_weights_only(tmp_path: Path) -> None:
    run = _build(tmp_path, every_n_iterations=4, max_epochs=2)
    run["trainer"].run()
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ckpt_000000008.pt", "ckpt_000000012.pt", "index.json"]  # keep_last=2, no temp files
    ckpt = read_checkpoint(folder / "ckpt_000000012.pt")  # its own digest verified, then weights_only loading
    assert set(ckpt["objects"]) == {"network", "optimizer", "scheduler", "lilaw", "trainer", "recorder"}
    assert ckpt["world_size"] == 1 and "rng" not in ckpt  # the random states are per rank only
    assert all(isinstance(v, torch.Tensor) for v in ckpt["ranks"][0]["rng"].values())
    assert ckpt["objects"]["trainer"]["engine"]["iteration"] == 12
    assert ckpt["objects"]["lilaw"]["steps"] == 12
    assert read_checkpoint(find_checkpoints(folder)[0])["iteration"] == 12  # the hash in the index matches


def test_failed_write_keeps_previous_checkpoint_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _build(tmp_path, max_epochs=2)
    _crash_at(run, 7)
    with pytest.raises(_Crash):
        run["trainer"].run()  # ckpt at iteration 6
    before = (tmp_path / "checkpoints" / "index.json").read_bytes()

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lilaw_med.utils.os.fsync", full_disk)
    engine = run["trainer"]
    engine.state.iteration = 9
    with pytest.raises(OSError, match=r"could not write checkpoint .*ckpt_000000009\.pt: No space left"):
        run["ckpt"](engine)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_000000006.pt", "index.json"]
    assert (tmp_path / "checkpoints" / "index.json").read_bytes() == before


def test_resuming_a_finished_run_is_recognised(tmp_path: Path) -> None:
    run = _build(tmp_path, max_epochs=1)
    run["trainer"].run()
    run = _build(tmp_path, max_epochs=1)
    assert resume_from(tmp_path, run["trainer"], run["objects"], run["sampler"]) == EPOCH_LENGTH
    assert run_is_complete(run["trainer"])


def test_resume_without_checkpoint_starts_over_and_bad_resumes_are_clear_errors(tmp_path: Path) -> None:
    run = _build(tmp_path / "empty")  # killed before its first checkpoint: starts over, nothing loaded
    assert resume_from(tmp_path / "empty", run["trainer"], run["objects"], run["sampler"]) == 0
    assert run["trainer"].state.iteration == 0
    run = _build(tmp_path, every_n_iterations=4)
    _crash_at(run, 5)
    with pytest.raises(_Crash):
        run["trainer"].run()
    run = _build(tmp_path, every_n_iterations=4)
    with pytest.raises(ValueError, match="needs the training loader's ResumableSampler"):
        resume_from(tmp_path, run["trainer"], run["objects"], train_sampler=None)
    with pytest.raises(ValueError, match="has no state for"):
        resume_from(tmp_path, run["trainer"], {**run["objects"], "extra": nn.Linear(1, 1)}, run["sampler"])


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_amp_grad_scaler_state_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MONAI's Trainer.run creates torch.cuda.amp.GradScaler(); on a CPU machine make it a CPU scaler whose
    # scale doubles every 2 steps, so its state changes during the run and a fresh one would differ
    monkeypatch.setattr(
        torch.cuda.amp, "GradScaler", lambda: torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)
    )

    def seeded() -> None:
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)

    seeded()
    ref = _build(tmp_path / "reference", every_n_iterations=4, max_epochs=2, amp=True)
    ref["trainer"].run()
    seeded()
    run = _build(tmp_path / "run", every_n_iterations=4, max_epochs=2, amp=True)
    _crash_at(run, 9)
    with pytest.raises(_Crash):
        run["trainer"].run()
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_000000008.pt")["scaler"]
    assert saved["scale"] == 128.0  # 8 doubled after steps 2, 4, 6 and 8
    run = _build(tmp_path / "run", init_seed=5, every_n_iterations=4, max_epochs=2, amp=True)
    assert (
        resume_from(tmp_path / "run", run["trainer"], run["objects"], run["sampler"]) == 8
    )  # inside epoch 2
    run["trainer"].run()
    assert run["trainer"].scaler.state_dict() == ref["trainer"].scaler.state_dict()
    _assert_same(_final(run), _final(ref))


def test_checkpoint_missing_from_a_lost_or_broken_index_is_still_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lilaw_med.run.checkpoint_format import load_latest_checkpoint

    run = _build(tmp_path, max_epochs=2)
    run["trainer"].run()
    folder = tmp_path / "checkpoints"
    index = folder / "index.json"
    index.write_text('{"checkpoints": [{"file": "ckpt_000000006.pt"')  # a kill can't do this, a disk error can
    with caplog.at_level(logging.WARNING, logger="lilaw_med.handlers.checkpoint"):
        info, ckpt, rejected = load_latest_checkpoint(folder)
    assert (info.iteration, info.sha256, rejected) == (12, None, [])  # found by name, verified by loading
    assert "index" in caplog.text and "unreadable" in caplog.text
    index.unlink()  # killed between writing the checkpoint and the index
    assert load_latest_checkpoint(folder)[0].iteration == 12
