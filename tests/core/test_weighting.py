"""The spec's weight formula against hand-computed values, identities and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from lilaw_med import LiLAWWeighting, label_agreement, lilaw_terms, lilaw_weights


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _hand_weight(probs: list[float], y: int, a: float, b: float, d: float) -> float:
    x, m = probs[y], max(probs)
    return _sigmoid(a * x - m) + _sigmoid(-(b * x - m)) + math.exp(-((d * x - m) ** 2) / 2)


def test_weights_match_values_computed_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    a, b, d = 2.5, 1.5, 3.0
    expected = []
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        e = [math.exp(v) for v in row]
        probs = [v / sum(e) for v in e]
        expected.append(_hand_weight(probs, y, a, b, d))
    got = lilaw_weights(logits, labels, a, b, d)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_agreeing_sample_has_x_equal_m_and_disagreeing_x_below_m():
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    x, m, pred = label_agreement(logits, torch.tensor([0, 1]))
    assert x[0] == pytest.approx(m[0].item())
    assert x[1] < m[1]
    assert pred.tolist() == [0, 0]


def test_equal_alpha_and_beta_give_one_plus_w_delta():
    torch.manual_seed(1)
    logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
    terms = lilaw_terms(logits, labels, 1.7, 1.7, 2.9)
    torch.testing.assert_close(terms.weight, 1 + terms.w_delta)
    torch.testing.assert_close(terms.w_alpha + terms.w_beta, torch.ones(16))


def test_integer_column_and_one_hot_labels_agree():
    torch.manual_seed(2)
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    w = lilaw_weights(logits, labels, 2.0, 2.0, 2.0)
    torch.testing.assert_close(lilaw_weights(logits, labels.unsqueeze(1), 2.0, 2.0, 2.0), w)
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(lilaw_weights(logits, one_hot, 2.0, 2.0, 2.0), w)


def test_single_binary_logit_uses_one_minus_p_and_p():
    z = torch.tensor([[1.2], [-0.4], [0.0]])
    y = torch.tensor([1, 1, 0])
    a, b, d = 2.0, 1.5, 2.5
    expected = []
    for zi, yi in zip(z.reshape(-1).tolist(), y.tolist(), strict=True):
        p = _sigmoid(zi)
        expected.append(_hand_weight([1 - p, p], yi, a, b, d))
    assert lilaw_weights(z, y, a, b, d).tolist() == pytest.approx(expected, rel=1e-6)
    # the same binary problem as two logits (0, z) gives the same weights
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert lilaw_weights(two, y, a, b, d).tolist() == pytest.approx(expected, rel=1e-6)


def test_multi_label_weights_apply_per_sample_and_label():
    z = torch.tensor([[0.3, -2.0], [1.0, 0.5]])
    y = torch.tensor([[1, 0], [0, 1]])
    w = lilaw_weights(z, y, 2.0, 2.0, 2.0, multi_label=True)
    assert w.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            p = _sigmoid(z[i, j].item())
            assert w[i, j].item() == pytest.approx(_hand_weight([1 - p, p], int(y[i, j]), 2.0, 2.0, 2.0), rel=1e-6)


def test_gradients_match_finite_differences_in_float64():
    torch.manual_seed(3)
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (6,))
    scalars = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.8, 2.3, 2.9)]

    def f(z, a, b, d):
        return lilaw_weights(z, labels, a, b, d)

    assert torch.autograd.gradcheck(f, (logits, *scalars), eps=1e-6, atol=1e-7)


def test_labels_out_of_range_are_refused_with_the_range():
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        lilaw_weights(torch.zeros(2, 3), torch.tensor([0, 3]), 2.0, 2.0, 2.0)


def test_mismatched_target_shape_is_refused():
    with pytest.raises(ValueError, match="target must have shape"):
        lilaw_weights(torch.zeros(2, 3), torch.tensor([0, 1, 2]), 2.0, 2.0, 2.0)


def test_weighting_module_clamps_alpha_and_delta():
    w = LiLAWWeighting()
    with torch.no_grad():
        w.alpha.fill_(0.3)
        w.beta.fill_(2.5)
        w.delta.fill_(1.0)
    w.clamp_()
    assert w.as_dict() == pytest.approx({"alpha": 1.0, "beta": 2.5, "delta": 2.5})


def test_weighting_module_refuses_initial_values_that_break_the_clamps():
    with pytest.raises(ValueError, match="alpha"):
        LiLAWWeighting(alpha=0.5)
    with pytest.raises(ValueError, match="delta"):
        LiLAWWeighting(beta=3.0, delta=2.0)


def test_weighting_module_state_dict_round_trip():
    a = LiLAWWeighting(alpha=1.5, beta=0.5, delta=3.0)
    b = LiLAWWeighting()
    b.load_state_dict(a.state_dict())
    assert b.as_dict() == pytest.approx({"alpha": 1.5, "beta": 0.5, "delta": 3.0})


def test_detached_parameters_get_no_gradient():
    w = LiLAWWeighting()
    terms = w(torch.randn(4, 2, requires_grad=True), torch.tensor([0, 1, 1, 0]), detach_params=True)
    terms.weight.sum().backward()
    assert w.alpha.grad is None and w.beta.grad is None and w.delta.grad is None
