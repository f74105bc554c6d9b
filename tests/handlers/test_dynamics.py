"""DynamicsRecorder: the recorded table equals the values computed by hand, never mixes training
and validation statistics, resumes, memory-maps, and records each item once under DDP."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med import LiLAWHandler, LiLAWLoss, LiLAWWeighting, lilaw_terms
from lilaw_med.handlers.dynamics import DynamicsRecorder
from lilaw_med.run.dynamics_format import FLOAT_FIELDS, load_dynamics

N_ITEMS, N_CLASSES, BATCH = 10, 3, 4


def _logits(epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + epoch)
    return torch.randn(N_ITEMS, N_CLASSES, generator=g) * 2


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
IDS = [f"item-{i}" for i in range(N_ITEMS)]
ORDER = [[3, 1, 7, 0], [9, 2, 5, 8], [4, 6]]  # the batches of every epoch (items by position)


def _loss() -> LiLAWLoss:
    return LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(alpha=3.0, beta=1.5, delta=2.5), warmup_epochs=0)


def _hand_engine(loss: LiLAWLoss) -> Engine:
    """A plain ignite engine whose step calls the loss on fixed logits: no network at all."""

    def step(engine: Engine, batch: dict) -> dict:
        idx = batch["pos"]
        out = loss(_logits(engine.state.epoch)[idx], LABELS[idx])
        return {"loss": out}

    return Engine(step)


def _batches() -> list[dict]:
    return [{"id": [IDS[i] for i in b], "pos": torch.tensor(b)} for b in ORDER]


def test_recorded_table_matches_values_computed_by_hand(tmp_path):
    loss = _loss()
    engine = _hand_engine(loss)
    rec = DynamicsRecorder(loss, IDS, tmp_path / "dynamics", record_validation=False)
    rec.attach(engine)
    engine.run(_batches(), max_epochs=2)

    dyn = load_dynamics(tmp_path / "dynamics")
    assert dyn.ids == IDS and dyn.epochs == [1, 2]
    for e in (1, 2):
        t = lilaw_terms(_logits(e), LABELS, 3.0, 1.5, 2.5)
        ce = nn.functional.cross_entropy(_logits(e), LABELS, reduction="none")
        expected = {"prob_label": t.prob_label, "prob_max": t.prob_max, "w_alpha": t.w_alpha, "w_beta": t.w_beta,
                    "w_delta": t.w_delta, "weight": t.weight, "loss": ce}
        for name, value in expected.items():
            np.testing.assert_allclose(dyn[name][e - 1], value.numpy(), rtol=2e-3, atol=2e-3, err_msg=name)
        np.testing.assert_array_equal(dyn["pred_label"][e - 1], t.pred_label.numpy())
        np.testing.assert_array_equal(dyn["count"][e - 1], np.ones(N_ITEMS))
        # without MONAI's FORWARD_COMPLETED the runner-up is 1 - s[y] when the model agrees, else max s
        other = torch.where(t.prob_label >= t.prob_max, 1 - t.prob_label, t.prob_max)
        np.testing.assert_allclose(dyn["prob_other"][e - 1], other.numpy(), atol=2e-3)
    assert dyn.records[0].dtype["prob_label"] == np.float16
    manifest = json.loads((tmp_path / "dynamics" / "manifest.json").read_text())
    assert manifest["lilaw"]["2"]["alpha"] == pytest.approx(3.0)


def test_unknown_id_and_missing_ids_are_clear_errors(tmp_path):
    loss = _loss()
    engine = _hand_engine(loss)
    DynamicsRecorder(loss, IDS[:5], tmp_path, record_validation=False).attach(engine)
    with pytest.raises(KeyError, match="not among the recorder's training ids"):
        engine.run(_batches(), max_epochs=1)
    with pytest.raises(ValueError, match="unique"):
        DynamicsRecorder(loss, ["a", "a"], tmp_path)


# ---------------------------------------------------------------------------- MONAI trainer
class _Dataset(torch.utils.data.Dataset):
    def __init__(self, prefix: str, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, N_CLASSES, (n,), generator=g)
        self.ids = [f"{prefix}{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "id": self.ids[i]}


def _trainer(recorder_first: bool, tmp_path, decollate: bool) -> tuple[DynamicsRecorder, LiLAWHandler, _Dataset, _Dataset]:
    torch.manual_seed(0)
    train, val = _Dataset("t", 12, 1), _Dataset("v", 6, 2)
    net = nn.Linear(4, N_CLASSES)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2,
        train_data_loader=DataLoader(train, batch_size=4, shuffle=False),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, decollate=decollate,
    )
    handler = LiLAWHandler(DataLoader(val, batch_size=4, shuffle=False), loss)
    # the validation ids are learnt from the handler's batches as they come
    recorder = DynamicsRecorder(loss, train.ids, tmp_path / "dynamics", meta_handler=handler)
    if recorder_first:
        recorder.attach(trainer)
        handler.attach(trainer)
    else:
        handler.attach(trainer)
        recorder.attach(trainer)
    trainer.run()
    return recorder, handler, train, val


@pytest.mark.parametrize("decollate", [False, True])
def test_training_and_validation_never_mix_whatever_the_attach_order(tmp_path, decollate):
    results = {}
    for first in (True, False):
        _, handler, train, val = _trainer(first, tmp_path / str(first), decollate)
        folder = tmp_path / str(first) / "dynamics"
        results[first] = (load_dynamics(folder), load_dynamics(folder, split="validation"))
        tr, va = results[first]
        assert tr.ids == train.ids and va.ids == val.ids
        np.testing.assert_array_equal(tr["count"], 1)  # each training item once per epoch
        # 3 meta steps per epoch on a cycled loader of batches of 4 and 2 items: 4+2+4, then 2+4+2
        assert va["count"].sum(axis=1).tolist() == [10, 8]
        assert handler.steps == 6
    for split in (0, 1):
        for name in FLOAT_FIELDS:
            np.testing.assert_array_equal(results[True][split][name], results[False][split][name], err_msg=name)


def test_runner_up_probability_comes_from_the_trainers_logits(tmp_path):
    recorder, _, train, _ = _trainer(True, tmp_path, decollate=True)
    dyn = load_dynamics(tmp_path / "dynamics")
    x, m, other = dyn["prob_label"], dyn["prob_max"], dyn["prob_other"]
    agree = x >= m
    assert np.all(other[~agree] == m[~agree])
    assert np.all(other <= 1 - x + 2e-3) and np.all(other >= 0)
    assert np.any(other[agree] < 1 - x[agree] - 1e-2)  # three classes: strictly below the binary bound


# ---------------------------------------------------------------------------- resume, memmap, DDP
def _drive(rec: DynamicsRecorder, loss: LiLAWLoss, epoch: int, batches: list[list[int]]) -> None:
    """Drives the recorder by hand: EPOCH_STARTED, then one ITERATION_COMPLETED per batch."""
    eng = SimpleNamespace(state=SimpleNamespace(epoch=epoch, iteration=0, batch=None, output=None))
    rec._epoch_started(eng)
    for b in batches:
        loss(_logits(epoch)[b], LABELS[b])
        eng.state.batch = {"id": [IDS[i] for i in b]}
        eng.state.iteration += 1
        rec(eng)
    return eng


def _finish(rec: DynamicsRecorder, epoch: int) -> None:
    rec._epoch_completed(SimpleNamespace(state=SimpleNamespace(epoch=epoch)))


def test_resume_mid_epoch_gives_the_same_table(tmp_path):
    loss = _loss()
    whole = DynamicsRecorder(loss, IDS, tmp_path / "whole", record_validation=False)
    _drive(whole, loss, 1, ORDER)
    _finish(whole, 1)

    first = DynamicsRecorder(loss, IDS, tmp_path / "resumed", record_validation=False)
    _drive(first, loss, 1, ORDER[:2])
    state = first.state_dict()
    second = DynamicsRecorder(loss, IDS, tmp_path / "resumed", record_validation=False)
    second.load_state_dict(state)
    _drive(second, loss, 1, ORDER[2:])  # EPOCH_STARTED of the resumed epoch keeps the restored sums
    _finish(second, 1)
    a, b = load_dynamics(tmp_path / "whole"), load_dynamics(tmp_path / "resumed")
    for name in a.keys():
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_memmap_accumulators_record_the_same(tmp_path):
    out = {}
    for memmap in (False, True):
        loss = _loss()
        rec = DynamicsRecorder(loss, IDS, tmp_path / str(memmap), record_validation=False, memmap=memmap)
        _drive(rec, loss, 1, ORDER)
        _finish(rec, 1)
        out[memmap] = load_dynamics(tmp_path / str(memmap))
    assert [p.name for p in (tmp_path / "True").glob(".accumulators_training.*")] == [
        f".accumulators_training.rank0.pid{os.getpid()}.npy"]
    for name in out[False].keys():
        np.testing.assert_array_equal(out[False][name], out[True][name])


def test_memmap_accumulators_of_two_ranks_on_one_node_are_apart(tmp_path):
    """Two ranks writing into one dynamics folder, their epochs interleaved: each item counted once."""
    loss = _loss()
    sums: dict[str, list[torch.Tensor]] = {}

    def reduce_as(rank: int):
        def reduce(t: torch.Tensor, op: str) -> torch.Tensor:
            sums.setdefault(op, []).append(t.clone())
            return t
        return reduce

    ranks = [DynamicsRecorder(loss, IDS, tmp_path, record_validation=False, memmap=True, reduce_fn=reduce_as(r),
                              is_writer=r == 0, rank=r) for r in (0, 1)]
    eng = SimpleNamespace(state=SimpleNamespace(epoch=1, iteration=0, batch=None, output=None))
    for rec in ranks:
        rec._epoch_started(eng)
    for k, b in enumerate(ORDER):  # batch k on rank k % 2, the two ranks alive at once
        loss(_logits(1)[b], LABELS[b])
        eng.state.batch = {"id": [IDS[i] for i in b]}
        ranks[k % 2](eng)
    assert len(list(tmp_path.glob(".accumulators_training.rank*.npy"))) == 2
    for rec in ranks:
        counts = rec.buffers["training"].counts
        np.testing.assert_array_equal(counts, np.isin(np.arange(N_ITEMS), sum(ORDER[rec.rank::2], [])))
    t = lilaw_terms(_logits(1), LABELS, 3.0, 1.5, 2.5)
    sums_by_rank = [np.asarray(rec.buffers["training"].sums)[:, 0] for rec in ranks]
    np.testing.assert_allclose(sums_by_rank[0] + sums_by_rank[1], t.prob_label.numpy(), atol=1e-6)
    for rec in ranks:
        rec._remove_memmap()
    assert not list(tmp_path.glob(".accumulators_training.*"))


def test_each_item_is_recorded_once_across_ranks(tmp_path):
    loss = _loss()
    captured: list[torch.Tensor] = []

    def rank1_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        captured.append(t.clone())
        return t

    def rank0_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        other = captured.pop(0)
        return t + other if op == "sum" else torch.maximum(t, other)

    r1 = DynamicsRecorder(loss, IDS, tmp_path / "r1", record_validation=False, reduce_fn=rank1_reduce, is_writer=False)
    _drive(r1, loss, 1, ORDER[1::2])  # rank 1 sees batches 1
    _finish(r1, 1)
    r0 = DynamicsRecorder(loss, IDS, tmp_path / "r0", record_validation=False, reduce_fn=rank0_reduce, is_writer=True)
    _drive(r0, loss, 1, ORDER[0::2])  # rank 0 sees batches 0 and 2
    _finish(r0, 1)
    assert not (tmp_path / "r1" / "manifest.json").exists()  # only the writer writes
    dyn = load_dynamics(tmp_path / "r0")
    np.testing.assert_array_equal(dyn["count"][0], 1)
    t = lilaw_terms(_logits(1), LABELS, 3.0, 1.5, 2.5)
    np.testing.assert_allclose(dyn["prob_label"][0], t.prob_label.numpy(), atol=2e-3)
    np.testing.assert_array_equal(dyn["pred_label"][0], t.pred_label.numpy())


def test_load_dynamics_explains_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dynamics found"):
        load_dynamics(tmp_path)


def test_unseen_items_are_nan_with_count_zero(tmp_path):
    loss = _loss()
    rec = DynamicsRecorder(loss, IDS, tmp_path, record_validation=False)
    _drive(rec, loss, 1, ORDER[:1])
    _finish(rec, 1)
    dyn = load_dynamics(tmp_path)
    seen = np.isin(np.arange(N_ITEMS), ORDER[0])
    assert np.isnan(dyn["prob_label"][0][~seen]).all() and np.isfinite(dyn["prob_label"][0][seen]).all()
    assert (dyn["count"][0][~seen] == 0).all() and (dyn["pred_label"][0][~seen] == -1).all()


# ---------------------------------------------------------------------------- class probabilities (format 2)
# logits log([1, 2, 5]) have softmax [1, 2, 5] / 8 (exact in float16), log([1, 1, 2]) -> [1, 1, 2] / 4, ...
_SHARES = {1: [[1, 2, 5], [1, 1, 2], [3, 1, 4]], 2: [[5, 2, 1], [2, 1, 1], [1, 1, 6]]}
_P_LABELS = torch.tensor([2, 0, 1])
_P_IDS = ["a", "b", "c"]


def _shares_logits(epoch: int) -> torch.Tensor:
    return torch.log(torch.tensor(_SHARES[epoch], dtype=torch.float32))


def _hand_probs(epoch: int) -> np.ndarray:
    s = np.array(_SHARES[epoch], dtype=np.float64)
    return s / s.sum(axis=1, keepdims=True)


def _drive_logits(rec: DynamicsRecorder, loss: LiLAWLoss, epoch: int, batches: list[list[int]],
                  meta: SimpleNamespace | None = None, val: list[tuple[list[str], torch.Tensor, torch.Tensor]] = ()) -> None:
    """EPOCH_STARTED, then per batch MONAI's FORWARD_COMPLETED (the logits), the loss and
    ITERATION_COMPLETED; after each batch, the next meta step of ``val`` (ids, logits, labels)."""
    eng = SimpleNamespace(state=SimpleNamespace(epoch=epoch, iteration=0, batch=None, output=None))
    rec._epoch_started(eng)
    val = list(val)
    for b in batches:
        z = _shares_logits(epoch)[b]
        eng.state.batch, eng.state.output = {"id": [_P_IDS[i] for i in b]}, {"pred": z}
        eng.state.iteration += 1
        rec._forward_completed(eng)
        loss(z, _P_LABELS[b])
        rec(eng)
        if val:
            ids, vz, vy = val.pop(0)
            meta.last_val_batch, meta.last_val_pred = {"id": ids}, vz
            loss.meta_loss(vz, vy)


def test_recorder_stores_every_class_probability_as_the_softmax_of_the_logits_it_saw(tmp_path):
    loss = _loss()
    rec = DynamicsRecorder(loss, _P_IDS, tmp_path, record_validation=False)
    for epoch in (1, 2):
        _drive_logits(rec, loss, epoch, [[2, 0], [1]])
        _finish(rec, epoch)
    dyn = load_dynamics(tmp_path)
    assert dyn.has_probs and "probs" in dyn.keys()
    probs = dyn["probs"]
    assert probs.shape == (2, 3, 3) and dyn.records[0].dtype["probs"].base == np.float16
    # epoch 1: [1, 2, 5] / 8, [1, 1, 2] / 4, [3, 1, 4] / 8; epoch 2: [5, 2, 1] / 8, [2, 1, 1] / 4, [1, 1, 6] / 8
    np.testing.assert_array_equal(probs[0], [[0.125, 0.25, 0.625], [0.25, 0.25, 0.5], [0.375, 0.125, 0.5]])
    np.testing.assert_array_equal(probs[1], [[0.625, 0.25, 0.125], [0.5, 0.25, 0.25], [0.125, 0.125, 0.75]])
    for e in (1, 2):
        np.testing.assert_allclose(probs[e - 1], _hand_probs(e))
        # the per-item fields agree with the stored row: s[y], max s, the runner-up
        np.testing.assert_allclose(dyn["prob_label"][e - 1], _hand_probs(e)[np.arange(3), _P_LABELS.numpy()], atol=1e-3)
        np.testing.assert_allclose(dyn["prob_max"][e - 1], _hand_probs(e).max(axis=1), atol=1e-3)
    # epoch 1, item "a" (label 2, [1, 2, 5] / 8): the label is the top class, the runner-up 2/8
    assert dyn["prob_other"][0][0] == pytest.approx(0.25, abs=1e-3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == 2 and "probs" in manifest["fields"]


def test_validation_probabilities_come_from_the_meta_steps_logits_averaged_over_its_visits(tmp_path):
    loss = _loss()
    meta = SimpleNamespace(last_val_batch=None, last_val_pred=None, val_loader=None)
    rec = DynamicsRecorder(loss, _P_IDS, tmp_path, val_ids=["v0", "v1"], meta_handler=meta)
    log = lambda *shares: torch.log(torch.tensor(shares, dtype=torch.float32))  # noqa: E731
    # two meta steps: v0 with [1, 3] / 4 then [3, 1] / 4 -> mean [0.5, 0.5]; v1 once with [1, 7] / 8
    val = [(["v0", "v1"], log([1.0, 3.0], [1.0, 7.0]), torch.tensor([1, 1])),
           (["v0"], log([3.0, 1.0]), torch.tensor([1]))]
    _drive_logits(rec, loss, 1, [[0], [1, 2]], meta=meta, val=val)
    _finish(rec, 1)
    dyn = load_dynamics(tmp_path, split="validation")
    assert dyn.ids == ["v0", "v1"] and dyn.has_probs
    np.testing.assert_array_equal(dyn["count"][0], [2, 1])
    np.testing.assert_array_equal(dyn["probs"][0], [[0.5, 0.5], [0.125, 0.875]])
    np.testing.assert_allclose(dyn["prob_label"][0], [0.5, 0.875], atol=1e-3)  # label 1: (0.75 + 0.25) / 2
    train = load_dynamics(tmp_path)  # the training records are untouched by the meta step's
    np.testing.assert_allclose(train["probs"][0], _hand_probs(1))


def test_recorded_probabilities_survive_a_mid_epoch_resume(tmp_path):
    def run(split_at: int | None, folder):
        loss = _loss()
        meta = SimpleNamespace(last_val_batch=None, last_val_pred=None, val_loader=None)
        rec = DynamicsRecorder(loss, _P_IDS, folder, val_ids=["v0"], meta_handler=meta)
        val = [(["v0"], torch.log(torch.tensor([[1.0, 3.0]])), torch.tensor([1])),
               (["v0"], torch.log(torch.tensor([[1.0, 1.0]])), torch.tensor([0]))]
        batches = [[0, 1], [2]]
        if split_at is None:
            _drive_logits(rec, loss, 1, batches, meta=meta, val=val)
        else:
            _drive_logits(rec, loss, 1, batches[:split_at], meta=meta, val=val[:split_at])
            rec._collect_validation()  # the pending meta step, as the next ITERATION_COMPLETED would
            path = folder.parent / "state.pt"
            torch.save(rec.state_dict(), path)
            state = torch.load(path, weights_only=True)
            assert "probs" in state["buffers"]["training"] and "probs" in state["buffers"]["validation"]
            loss = _loss()
            meta = SimpleNamespace(last_val_batch=None, last_val_pred=None, val_loader=None)
            rec = DynamicsRecorder(loss, _P_IDS, folder, val_ids=["v0"], meta_handler=meta)
            rec.load_state_dict(state)
            _drive_logits(rec, loss, 1, batches[split_at:], meta=meta, val=val[split_at:])
        _finish(rec, 1)
        return load_dynamics(folder), load_dynamics(folder, split="validation")

    whole, resumed = run(None, tmp_path / "whole"), run(1, tmp_path / "resumed")
    for a, b in zip(whole, resumed, strict=True):
        for name in a.keys():
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_allclose(resumed[0]["probs"][0], _hand_probs(1))
    np.testing.assert_array_equal(resumed[1]["probs"][0], [[0.375, 0.625]])  # ([1, 3] / 4 + [1, 1] / 2) / 2


def test_version_1_dynamics_without_probs_still_load(tmp_path):
    loss = _loss()
    rec = DynamicsRecorder(loss, IDS, tmp_path, record_validation=False)
    _drive(rec, loss, 1, ORDER)  # no FORWARD_COMPLETED: the logits never reach the recorder
    _finish(rec, 1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "probs" not in manifest["fields"]
    manifest["version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    dyn = load_dynamics(tmp_path)
    assert not dyn.has_probs and "probs" not in dyn.keys() and "probs" not in dyn.as_dict()
    with pytest.raises(KeyError, match="unknown dynamics field 'probs'"):
        dyn["probs"]
    t = lilaw_terms(_logits(1), LABELS, 3.0, 1.5, 2.5)
    np.testing.assert_allclose(dyn["prob_label"][0], t.prob_label.numpy(), atol=2e-3)
    manifest["version"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format version 3; this reader knows 2"):
        load_dynamics(tmp_path)


@pytest.mark.parametrize("decollate", [False, True])
def test_a_monai_trainer_records_probabilities_for_training_and_validation_items(tmp_path, decollate):
    _trainer(True, tmp_path, decollate)
    for split in ("training", "validation"):
        dyn = load_dynamics(tmp_path / "dynamics", split=split)
        assert dyn.has_probs, split
        p = dyn["probs"]
        assert p.shape == (2, len(dyn.ids), N_CLASSES)
        np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=3e-3)
        labels = np.array([int(i[1:]) for i in dyn.ids])  # position in its _Dataset
        y = (_Dataset("t", 12, 1) if split == "training" else _Dataset("v", 6, 2)).y.numpy()[labels]
        np.testing.assert_allclose(np.take_along_axis(p, np.broadcast_to(y[None, :, None], (2, len(y), 1)), 2)[..., 0],
                                   dyn["prob_label"], atol=3e-3)


def test_without_the_meta_handler_validation_is_not_recorded_and_the_log_says_why(tmp_path, caplog):
    loss = _loss()
    rec = DynamicsRecorder(loss, _P_IDS, tmp_path, val_ids=["v0"])  # no meta_handler
    meta = SimpleNamespace(last_val_batch=None, last_val_pred=None, val_loader=None)
    with caplog.at_level("WARNING", logger="lilaw_med.handlers.dynamics"):
        _drive_logits(rec, loss, 1, [[0, 1, 2]], meta=meta,
                      val=[(["v0"], torch.log(torch.tensor([[1.0, 3.0]])), torch.tensor([1]))])
        _finish(rec, 1)
    assert "pass the LiLAWHandler as meta_handler" in caplog.text
    # with val_ids the split is recorded with its ids, and no item in it was seen
    val = load_dynamics(tmp_path, split="validation")
    assert list(val.ids) == ["v0"] and val.epochs == [1]
    np.testing.assert_array_equal(val["count"], [[0]])
    np.testing.assert_allclose(load_dynamics(tmp_path)["probs"][0], _hand_probs(1))


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped: no process has it (until pids wrap)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_processs_accumulator_file_is_removed_and_a_live_ones_kept(tmp_path):
    dead = tmp_path / f".accumulators_training.rank0.pid{_dead_pid()}.npy"
    live = tmp_path / f".accumulators_training.rank0.pid{os.getppid()}.npy"  # another run into this folder
    other_rank = tmp_path / f".accumulators_training.rank1.pid{_dead_pid()}.npy"
    for path in (dead, live, other_rank):
        path.write_bytes(b"old")
    loss = _loss()
    rec = DynamicsRecorder(loss, IDS, tmp_path, record_validation=False, memmap=True, rank=0)
    _drive(rec, loss, 1, ORDER)
    own = tmp_path / f".accumulators_training.rank0.pid{os.getpid()}.npy"
    assert sorted(p.name for p in tmp_path.glob(".accumulators_training.*")) == sorted(
        p.name for p in (live, other_rank, own))
    assert live.read_bytes() == b"old"


def test_a_failing_training_removes_its_accumulator_file_and_still_raises(tmp_path):
    loss = _loss()
    engine = _hand_engine(loss)
    rec = DynamicsRecorder(loss, IDS, tmp_path, record_validation=False, memmap=True)
    rec.attach(engine)

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def fail(_: Engine) -> None:
        assert list(tmp_path.glob(".accumulators_training.*"))  # the file exists while training runs
        raise RuntimeError("out of memory, say")

    with pytest.raises(RuntimeError, match="out of memory, say"):
        engine.run(_batches(), max_epochs=1)
    assert not list(tmp_path.glob(".accumulators_training.*"))
