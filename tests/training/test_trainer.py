"""Training assembly: per-sample losses by name, the baseline switch, the LR schedule, device resolution."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lilaw_med.losses import build_base_loss
from lilaw_med.run.config import Config, ScheduleConfig, validate_config
from lilaw_med.training.devices import resolve_device
from lilaw_med.training.trainer import build_lilaw_loss, build_scheduler

LOSS = validate_config({"data": {"sample_data": True}})["loss"]


def test_per_sample_losses_match_their_definitions() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2])
    ce = build_base_loss("ce", LOSS, None, False)(logits, y)
    assert torch.allclose(ce, nn.functional.cross_entropy(logits, y, reduction="none"))
    focal0 = build_base_loss("focal", {**LOSS, "focal_gamma": 0.0}, None, False)(logits, y)
    assert torch.allclose(focal0, ce, atol=1e-6)  # gamma 0: focal loss is cross-entropy
    focal2 = build_base_loss("focal", LOSS, None, False)(logits, y)
    p = torch.softmax(logits, 1).gather(1, y[:, None])[:, 0]
    assert torch.allclose(focal2, -((1 - p) ** 2) * torch.log(p), atol=1e-5)
    w = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(build_base_loss("ce", LOSS, w, False)(logits, y), ce * w[y])
    assert torch.allclose(build_base_loss("gce", LOSS, w, False)(logits, y),
                          (1 - p**0.7) / 0.7 * w[y], atol=1e-6)
    z, yb = torch.randn(6, 1), torch.tensor([0, 1, 1, 0, 1, 0])
    bce = build_base_loss("bce", LOSS, None, False)(z, yb)
    assert bce.shape == (6,)
    assert torch.allclose(bce, nn.functional.binary_cross_entropy_with_logits(z[:, 0], yb.float(), reduction="none"))


def test_baseline_loss_never_weights() -> None:
    cfg = Config.from_mapping({"data": {"sample_data": True}, "lilaw": {"enabled": False}, "train": {"epochs": 3}})
    loss = build_lilaw_loss(cfg, nn.CrossEntropyLoss(reduction="none"))
    for epoch in (1, 2, 3):
        loss.set_epoch(epoch)
        assert not loss.is_active
    logits, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(loss(logits, y), nn.functional.cross_entropy(logits, y))


def test_schedule_factors_by_hand() -> None:
    def lrs(schedule: dict, epochs: int) -> list[float]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(ScheduleConfig(**schedule), opt, epochs)
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            sched.step()
        return out

    assert lrs({"name": "step", "step_size": 2, "gamma": 0.5}, 5) == [1.0, 1.0, 0.5, 0.5, 0.25]
    cos = lrs({"name": "cosine", "warmup_epochs": 1}, 5)
    assert cos[0] == 0.5 and cos[1] == 1.0 and cos[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert build_scheduler(ScheduleConfig(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1), 3) is None


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("method", "num_classes", "multi_label", "message"),
    [
        ("threshold", 3, False, "applies to binary tasks only"),
        ("prior", 2, False, "single-label tasks with 3 or more classes"),
        ("prior", 4, True, "single-label tasks with 3 or more classes"),
    ],
)
def test_calibration_that_does_not_fit_the_task_is_refused_by_field(
    method: str, num_classes: int, multi_label: bool, message: str
) -> None:
    from lilaw_med.run.config import ConfigError
    from lilaw_med.training.trainer import _check_calibration

    loss = {"loss": {"name": "bce"}} if multi_label else {}
    cfg = Config.from_mapping(
        {"data": {"sample_data": True, "multi_label": multi_label}, "eval": {"calibration": method}, **loss}
    )
    with pytest.raises(ConfigError, match=f"'eval.calibration' is '{method}'.*{message}"):
        _check_calibration(cfg, num_classes)
    # the same method on a task it fits passes
    fitting = Config.from_mapping({"data": {"sample_data": True}, "eval": {"calibration": method}})
    _check_calibration(fitting, 3 if method == "prior" else 2)
