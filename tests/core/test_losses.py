"""LiLAWLoss: the weighted mean, warm-up, reductions, refusals, statistics; GCE and SCE formulas."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import FocalLoss
from torch import nn

from lilaw_med import GCELoss, LiLAWLoss, LiLAWWeighting, SCELoss, lilaw_weights


def _batch(n: int = 8, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, requires_grad=True), torch.randint(0, c, (n,), generator=g)


def test_loss_is_mean_of_weight_times_per_sample_loss():
    logits, labels = _batch()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(1.5, 1.0, 2.5), warmup_epochs=0)
    per_sample = nn.functional.cross_entropy(logits, labels, reduction="none")
    w = lilaw_weights(logits, labels, 1.5, 1.0, 2.5)
    torch.testing.assert_close(loss(logits, labels), (w * per_sample).mean())


def test_weights_are_one_until_warmup_ends():
    logits, labels = _batch()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=2)
    plain = nn.functional.cross_entropy(logits, labels)
    loss.set_epoch(2)
    assert not loss.is_active
    torch.testing.assert_close(loss(logits, labels), plain)
    loss.set_epoch(3)
    assert loss.is_active
    assert not torch.allclose(loss(logits, labels), plain)


def test_a_reducing_base_loss_is_refused_with_a_clear_error():
    logits, labels = _batch()
    loss = LiLAWLoss(nn.CrossEntropyLoss(), warmup_epochs=0)  # reduction="mean"
    with pytest.raises(ValueError, match="reduction='none'"):
        loss(logits, labels)


def test_several_values_per_sample_need_an_explicit_reduction_rule():
    logits, labels = _batch(c=4)
    one_hot = nn.functional.one_hot(labels, 4).float()
    focal = FocalLoss(reduction="none", use_softmax=True, gamma=2.0)
    with pytest.raises(ValueError, match="reduce_classes"):
        LiLAWLoss(focal, warmup_epochs=0)(logits, one_hot)
    values = focal(logits, one_hot)
    assert values.shape == (8, 4)
    w = lilaw_weights(logits, one_hot, 2.0, 2.0, 2.0)
    torch.testing.assert_close(LiLAWLoss(focal, reduce_classes="sum", warmup_epochs=0)(logits, one_hot), (w * values.sum(1)).mean())
    torch.testing.assert_close(LiLAWLoss(focal, reduce_classes="mean", warmup_epochs=0)(logits, one_hot), (w * values.mean(1)).mean())


def test_binary_single_logit_with_bce():
    z = torch.tensor([[0.4], [-1.0], [2.0]], requires_grad=True)
    y = torch.tensor([[1.0], [0.0], [0.0]])
    loss = LiLAWLoss(nn.BCEWithLogitsLoss(reduction="none"), warmup_epochs=0)
    per_sample = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").reshape(-1)
    w = lilaw_weights(z, y, 2.0, 2.0, 2.0)
    torch.testing.assert_close(loss(z, y), (w * per_sample).mean())
    loss(z, y).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_multi_label_weights_each_sample_label_pair():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.randint(0, 2, (4, 3)).float()
    loss = LiLAWLoss(nn.BCEWithLogitsLoss(reduction="none"), multi_label=True, warmup_epochs=0)
    values = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    w = lilaw_weights(z, y, 2.0, 2.0, 2.0, multi_label=True)
    torch.testing.assert_close(loss(z, y), (w * values).mean())


def test_model_step_leaves_the_scalars_without_gradient():
    logits, labels = _batch()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    loss(logits, labels).backward()
    assert all(p.grad is None for p in loss.weighting.parameters())
    assert logits.grad is not None


def test_detached_weights_make_a_pure_reweighting():
    logits, labels = _batch()
    w = lilaw_weights(logits, labels, 2.0, 2.0, 2.0).detach()
    (grad_expected,) = torch.autograd.grad(
        (w * nn.functional.cross_entropy(logits, labels, reduction="none")).mean(), logits
    )
    detached = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), detach_weights=True, warmup_epochs=0)
    (grad_detached,) = torch.autograd.grad(detached(logits, labels), logits)
    torch.testing.assert_close(grad_detached, grad_expected)
    flowing = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    (grad_flowing,) = torch.autograd.grad(flowing(logits, labels), logits)
    assert not torch.allclose(grad_flowing, grad_expected)


def test_meta_loss_statistics_never_overwrite_the_training_statistics():
    logits, labels = _batch(seed=1)
    val_logits, val_labels = _batch(n=5, seed=2)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    loss(logits, labels)
    train_weight = loss.last_stats.weight.clone()
    meta = loss.meta_loss(val_logits, val_labels)
    meta.backward()
    torch.testing.assert_close(loss.last_stats.weight, train_weight)
    assert loss.last_val_stats.weight.shape == (5,)
    assert val_logits.grad is None  # the network's outputs are held constant
    assert all(p.grad is not None for p in loss.weighting.parameters())


def test_statistics_are_recorded_during_warmup_too():
    logits, labels = _batch()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=1)
    loss(logits, labels)
    assert loss.last_stats.prob_label.shape == (8,)
    torch.testing.assert_close(
        loss.last_loss, nn.functional.cross_entropy(logits, labels, reduction="none").detach()
    )


def test_gce_matches_its_formula():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    expected = (1 - p**0.7) / 0.7
    torch.testing.assert_close(GCELoss(reduction="none")(logits, labels), expected)
    assert GCELoss()(logits, labels).item() == pytest.approx(expected.mean().item())


def test_sce_matches_its_formula():
    logits = torch.tensor([[1.0, 0.0, 0.0]])
    labels = torch.tensor([2])
    p = math.exp(0.0) / (math.exp(1.0) + 2)
    expected = 0.1 * -math.log(p) + 1.0 * 4.0 * (1 - p)
    assert SCELoss(reduction="none")(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_gce_refuses_q_outside_its_range():
    with pytest.raises(ValueError, match="q"):
        GCELoss(q=0.0)


# ---------------------------------------------------------------- normalize_weights (issue 13, item 6)
def _normalize_case():
    """Fixed logits (double) and labels, and the weights and CE losses computed from the formula."""
    logits = torch.tensor(
        [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.5, 3.0, 0.0], [0.7, 0.9, -2.0], [1.0, -0.5, 2.5]],  # no ties: max(s) is differentiable
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 2, 0, 1, 2])
    return logits, labels


def _by_hand(logits: torch.Tensor, labels: torch.Tensor, a: float, b: float, d: float):
    s = logits.softmax(dim=1)
    x, m = s[torch.arange(len(labels)), labels], s.max(dim=1).values
    w = torch.sigmoid(a * x - m) + torch.sigmoid(-(b * x - m)) + torch.exp(-((d * x - m) ** 2) / 2)
    ce = -torch.log(x)
    return w, ce


def test_normalized_loss_is_the_mean_of_w_over_its_batch_mean_times_the_loss():
    logits, labels = _normalize_case()
    w, ce = _by_hand(logits, labels, 1.5, 1.0, 2.5)
    expected = (w / w.mean() * ce).mean()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(1.5, 1.0, 2.5), normalize_weights=True, warmup_epochs=0)
    torch.testing.assert_close(loss(logits, labels), expected, rtol=1e-6, atol=1e-9)
    # unnormalised: the mean weight times larger (about 2 with the spec's scalars)
    plain = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(1.5, 1.0, 2.5), warmup_epochs=0)
    torch.testing.assert_close(plain(logits, labels), (w * ce).mean(), rtol=1e-6, atol=1e-9)
    spec_w, _ = _by_hand(logits, labels, 2.0, 2.0, 2.0)
    assert 1.5 < spec_w.mean().item() <= 2.0
    torch.testing.assert_close(loss.last_stats.weight, w, rtol=1e-6, atol=1e-9)  # the raw weights are logged


def test_normalized_loss_gradient_matches_finite_differences_with_the_mean_held_constant():
    logits, labels = _normalize_case()
    weighting = LiLAWWeighting(1.5, 1.0, 2.5)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), weighting, normalize_weights=True, warmup_epochs=0)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z, labels), z)
    w0, _ = _by_hand(logits, labels, 1.5, 1.0, 2.5)
    c0 = w0.mean()  # the batch mean is detached: a constant of the step

    def f(zz: torch.Tensor) -> torch.Tensor:
        w, ce = _by_hand(zz, labels, 1.5, 1.0, 2.5)
        return (w / c0 * ce).mean()

    eps = 1e-6
    numeric = torch.zeros_like(logits)
    for idx in torch.cartesian_prod(torch.arange(logits.shape[0]), torch.arange(logits.shape[1])):
        i, j = int(idx[0]), int(idx[1])
        up, down = logits.clone(), logits.clone()
        up[i, j] += eps
        down[i, j] -= eps
        numeric[i, j] = (f(up) - f(down)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    # and w itself is differentiated (detach_weights=False): not the pure reweighting's gradient
    w_const = w0.detach()
    (reweighting,) = torch.autograd.grad(
        (w_const / c0 * nn.functional.cross_entropy(z, labels, reduction="none")).mean(), z
    )
    assert not torch.allclose(grad, reweighting)


def test_normalized_loss_with_equal_weights_is_the_base_loss_mean():
    # label 0 is the most probable with s = 0.6 in both rows, so x and m (hence w) are equal, while
    # the label-smoothed CE (it reads every class) differs between them
    logits = torch.tensor([[0.6, 0.2, 0.2], [0.6, 0.3, 0.1]], dtype=torch.float64).log()
    labels = torch.tensor([0, 0])
    base = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2)
    loss = LiLAWLoss(base, normalize_weights=True, warmup_epochs=0)
    value = loss(logits, labels)
    w = loss.last_stats.weight
    torch.testing.assert_close(w[0], w[1])
    assert w[0].item() > 1.5  # unnormalised, the loss would be almost twice the base loss
    per_sample = base(logits, labels)
    assert not torch.isclose(per_sample[0], per_sample[1])
    torch.testing.assert_close(value, per_sample.mean())


def test_meta_loss_is_never_normalised():
    logits, labels = _normalize_case()
    w, ce = _by_hand(logits, labels, 2.0, 2.0, 2.0)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), normalize_weights=True, warmup_epochs=0)
    torch.testing.assert_close(loss.meta_loss(logits, labels).double(), (w * ce).mean(), rtol=1e-5, atol=1e-7)


def test_normalize_weights_comes_from_the_config():
    from lilaw_med.run.config import Config
    from lilaw_med.training.trainer import build_lilaw_loss

    for value in (False, True):
        cfg = Config.from_mapping({"data": {"sample_data": True}, "lilaw": {"normalize_weights": value}})
        assert build_lilaw_loss(cfg, nn.CrossEntropyLoss(reduction="none")).normalize_weights is value
    assert Config.from_mapping({"data": {"sample_data": True}}).lilaw.normalize_weights is False


def _normalized_objective(logits: torch.Tensor, labels: torch.Tensor, a: float, b: float, d: float) -> float:
    w, ce = _by_hand(logits, labels, a, b, d)
    return float((w * ce).sum() / w.sum())


def test_normalized_meta_objective_is_the_weighted_mean_loss_with_finite_difference_gradients():
    logits, labels = _normalize_case()
    scalars = (1.5, 1.0, 2.5)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), LiLAWWeighting(*scalars), warmup_epochs=0,
                     meta_objective="normalized")
    value = loss.meta_loss(logits, labels)
    assert value.item() == pytest.approx(_normalized_objective(logits, labels, *scalars), rel=1e-6)
    value.backward()
    grads = [loss.weighting.alpha.grad.item(), loss.weighting.beta.grad.item(), loss.weighting.delta.grad.item()]
    h = 1e-6
    for i, g in enumerate(grads):
        up, down = list(scalars), list(scalars)
        up[i] += h
        down[i] -= h
        fd = (_normalized_objective(logits, labels, *up) - _normalized_objective(logits, labels, *down)) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-4, abs=1e-7)


def _agree_and_disagree() -> tuple[torch.Tensor, torch.Tensor]:
    # item 0: the model agrees with its label (s[y] ~ 0.9, low loss); item 1: it does not (s[y] ~ 0.1)
    logits = torch.tensor([[2.2, 0.0], [0.0, -2.2]], dtype=torch.float64)
    return logits, torch.tensor([0, 1])


@pytest.mark.parametrize(("objective", "alpha_sign", "beta_sign"), [("mean", 1, -1), ("normalized", -1, 1)])
def test_the_spec_objective_lowers_every_weight_and_the_normalized_one_follows_the_batch(objective, alpha_sign, beta_sign):
    # d(alpha) and d(beta) of the spec's mean(w * L) have one sign for every item (alpha falls and
    # beta rises on any batch); the weighted mean moves weight toward the low-loss item instead
    logits, labels = _agree_and_disagree()
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0, meta_objective=objective)
    loss.meta_loss(logits, labels).backward()
    assert math.copysign(1, loss.weighting.alpha.grad.item()) == alpha_sign
    assert math.copysign(1, loss.weighting.beta.grad.item()) == beta_sign


def test_normalized_meta_objective_has_no_gradient_when_every_item_has_the_same_loss():
    # equal losses: the weighted mean is that loss whatever the weights, so nothing moves the scalars
    logits = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]], dtype=torch.float64)
    loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0, meta_objective="normalized")
    loss.meta_loss(logits, torch.tensor([0, 1, 2])).backward()
    for p in (loss.weighting.alpha, loss.weighting.beta, loss.weighting.delta):
        assert abs(p.grad.item()) < 1e-6
    spec = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), warmup_epochs=0)
    spec.meta_loss(logits, torch.tensor([0, 1, 2])).backward()
    assert spec.weighting.alpha.grad.item() > 1e-3  # the spec's objective moves them all the same


def test_meta_objective_comes_from_the_config_and_rejects_unknown_names():
    from lilaw_med.run.config import Config
    from lilaw_med.training.trainer import build_lilaw_loss

    for value in ("mean", "normalized"):
        cfg = Config.from_mapping({"data": {"sample_data": True}, "lilaw": {"meta_objective": value}})
        assert build_lilaw_loss(cfg, nn.CrossEntropyLoss(reduction="none")).meta_objective == value
    with pytest.raises(ValueError, match="meta_objective"):
        LiLAWLoss(nn.CrossEntropyLoss(reduction="none"), meta_objective="sum")
