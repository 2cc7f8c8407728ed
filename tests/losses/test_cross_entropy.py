"""CrossEntropyLoss vs. a per-sample loop computing -sum_k q_k log p_k with ``math``."""

import math

import pytest
import torch
import torch.nn.functional as F

from reidkit.losses import CrossEntropyLoss


def _loop_smoothed_ce(logits, labels, eps):
    total = 0.0
    rows = logits.tolist()
    for row, y in zip(rows, labels.tolist()):
        k = len(row)
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        for c, v in enumerate(row):
            q = (1.0 - eps) * (1.0 if c == y else 0.0) + eps / k
            total -= q * (v - log_z)
    return total / len(rows)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=g) * 3, torch.tensor([0, 4, 2, 2, 1, 3])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 1.0])
def test_matches_loop(batch, eps):
    logits, labels = batch
    value = CrossEntropyLoss(eps)(logits, labels)
    assert value.item() == pytest.approx(_loop_smoothed_ce(logits, labels, eps), rel=1e-5)


def test_zero_smoothing_is_plain_cross_entropy(batch):
    logits, labels = batch
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(CrossEntropyLoss(0.0)(logits, labels), expected)


def test_default_is_eps_point_one_and_uses_logits(batch):
    logits, labels = batch
    loss = CrossEntropyLoss()
    assert loss.label_smoothing == 0.1 and CrossEntropyLoss.input == "logits"
    expected = _loop_smoothed_ce(logits, labels, 0.1)
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_int32_labels_and_gradient(batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    CrossEntropyLoss()(logits, labels.int()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [5, -1])
def test_label_out_of_range_raises(batch, bad):
    logits, labels = batch
    labels = labels.clone()
    labels[2] = bad
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        CrossEntropyLoss()(logits, labels)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (torch.zeros(5), torch.zeros(5, dtype=torch.long), "logits must be a"),
        (torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long), "labels must be a"),
        (torch.zeros(3, 4), torch.zeros(3), "labels must be a"),
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "labels has 2 entries"),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "at least 1"),
    ],
)
def test_bad_shapes_raise(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        CrossEntropyLoss()(logits, labels)


def test_non_tensor_raises():
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        CrossEntropyLoss()(torch.zeros(2, 3), [0, 1])


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_bad_label_smoothing_raises(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(eps)
