"""DynamicsRecorder: the recorded table equals the values computed by hand, never mixes training
and validation statistics, resumes, memory-maps, and records each item once under DDP."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med import LiLAWHandler, LiLAWLoss, LiLAWWeighting, lilaw_terms
from lilaw_med.handlers.dynamics import FLOAT_FIELDS, DynamicsRecorder, load_dynamics

N_ITEMS, N_CLASSES, BATCH = 10, 3, 4


def _logits(epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + epoch)
    return torch.randn(N_ITEMS, N_CLASSES, generator=g) * 2


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
IDS = [f"item-{i}" for i in range(N_ITEMS)]
ORDER = [[3, 1, 7, 0], [9, 2, 5, 8], [4, 6]]  # the batches of every epoch (items by position)


def _loss() -> LiLAWLoss:
    return LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(alpha=3.0, beta=1.5, delta=2.5))


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
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2,
        train_data_loader=DataLoader(train, batch_size=4, shuffle=False),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, decollate=decollate,
    )
    handler = LiLAWHandler(DataLoader(val, batch_size=4, shuffle=False), loss)
    recorder = DynamicsRecorder(loss, train.ids, tmp_path / "dynamics")  # val ids found through the handler
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
    assert (tmp_path / "True" / ".accumulators_training.npy").is_file()
    for name in out[False].keys():
        np.testing.assert_array_equal(out[False][name], out[True][name])


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
