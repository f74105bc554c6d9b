"""``LiLAWHandler(epoch_budget=S)``: the scalars move per epoch as S spec steps would, whatever the
batch size and the number of items; without it they follow the number of meta steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn
from torch.utils.data import DataLoader

from lilaw_med import LiLAWHandler, LiLAWLoss


def _items(n: int, seed: int) -> list[dict]:
    """Two overlapping Gaussian classes in 8 dimensions, 20% of the labels flipped."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 0.8 * (2 * y[:, None].float() - 1)
    flip = torch.rand(n, generator=g) < 0.2
    return [{"image": x[i], "label": torch.where(flip, 1 - y, y)[i]} for i in range(n)]


def _alpha_change_in_second_epoch(items: int, batch: int, epoch_budget: float | None) -> float:
    """Epoch 1 is the warm-up; returns how far alpha moves in epoch 2 over a fixed network.

    The network's learning rate is 0, so every configuration sees the same outputs and the
    movement depends on the meta step's schedule alone."""
    torch.manual_seed(0)
    net = nn.Linear(8, 2)
    with torch.no_grad():  # a fixed, reasonable classifier
        net.weight.copy_(torch.tensor([[-0.4] * 8, [0.4] * 8]))
        net.bias.zero_()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=1)
    train = DataLoader(_items(items, 1), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(2))
    val = DataLoader(_items(400, 3), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(4))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=train, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=loss,
    )
    LiLAWHandler(val, loss, epoch_budget=epoch_budget).attach(trainer)
    trainer.run()
    return 2.0 - loss.weighting.as_dict()["alpha"]


def test_step_lr_scales_the_spec_step_by_budget_over_meta_steps_per_epoch():
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    engine = SimpleNamespace(state=SimpleNamespace(epoch_length=150))
    assert LiLAWHandler([], loss, lr=0.01, epoch_budget=None).step_lr(engine) == 0.01
    assert LiLAWHandler([], loss, lr=0.01, epoch_budget=32).step_lr(engine) == pytest.approx(0.01 * 32 / 150)
    assert LiLAWHandler([], loss, lr=0.01, epoch_budget=32, every=2).step_lr(engine) == pytest.approx(0.01 * 32 / 75)
    # every=4 on 7 iterations: steps at global iterations 4, 8, 12, ... average 7 / 4 per epoch
    short = SimpleNamespace(state=SimpleNamespace(epoch_length=7))
    assert LiLAWHandler([], loss, lr=0.01, epoch_budget=32, every=4).step_lr(short) == pytest.approx(0.01 * 32 * 4 / 7)
    no_length = SimpleNamespace(state=SimpleNamespace(epoch_length=None))
    assert LiLAWHandler([], loss, lr=0.01, epoch_budget=32).step_lr(no_length) == 0.01


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_epoch_budget_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="epoch_budget"):
        LiLAWHandler([], LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0), epoch_budget=bad)


def test_budget_makes_the_change_per_epoch_independent_of_batch_size_and_item_count():
    changes = {(n, b): _alpha_change_in_second_epoch(n, b, 32) for n in (600, 2400) for b in (16, 64)}
    reference = changes[(600, 64)]
    assert reference > 0.005  # alpha falls: dW_alpha/dalpha > 0 for every item
    for key, change in changes.items():
        assert change == pytest.approx(reference, rel=0.2), (key, changes)


def test_without_budget_the_change_per_epoch_follows_the_number_of_meta_steps():
    few = _alpha_change_in_second_epoch(600, 64, None)  # 10 meta steps
    many = _alpha_change_in_second_epoch(2400, 16, None)  # 150 meta steps
    assert many > 8 * few
