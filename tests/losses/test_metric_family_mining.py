"""Quadruplet, soft hard-mining triplet and margin sample mining vs. plain Python loops over
hand-listed pairs and quadruplets (itertools over indices, ``math`` distances)."""

import itertools
import math

import pytest
import torch

from reidkit.losses import (
    MarginSampleMiningLoss,
    QuadrupletLoss,
    SoftHardTripletLoss,
    TripletLoss,
    hardest_negative_pairs,
)


def _euclid(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _batch(seed, labels=(0, 0, 1, 1, 2, 2, 3, 3), dim=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=g), torch.tensor(labels)


def _mean(terms):
    return sum(terms) / len(terms) if terms else 0.0


def _zero_with_grad(loss, x, y):
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    value.backward()
    return value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# --- quadruplet -------------------------------------------------------------------------------


def _loop_quadruplet(features, labels, margin1, margin2):
    """Mean over anchors of the batch-hard triplet term, plus mean over anchors of the term with
    the closest pair (i, j) of two identities, neither the anchor's."""
    xs, ys = features.tolist(), labels.tolist()
    first, second = [], []
    for a in range(len(ys)):
        pos = [_euclid(xs[a], xs[p]) for p in range(len(ys)) if p != a and ys[p] == ys[a]]
        neg = [_euclid(xs[a], xs[n]) for n in range(len(ys)) if ys[n] != ys[a]]
        if not (pos and neg):
            continue
        first.append(max(0.0, max(pos) - min(neg) + margin1))
        pair_d = [
            _euclid(xs[i], xs[j])
            for i, j in itertools.combinations(range(len(ys)), 2)
            if ys[i] != ys[j] and ys[a] not in (ys[i], ys[j])
        ]
        if pair_d:
            second.append(max(0.0, max(pos) - min(pair_d) + margin2))
    return _mean(first) + _mean(second), first, second


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margins", [(0.3, 0.15), (1.0, 0.5)])
def test_quadruplet_matches_loop(seed, margins):
    x, y = _batch(seed)
    expected, first, second = _loop_quadruplet(x, y, *margins)
    assert len(first) == len(second) == 8
    assert QuadrupletLoss(*margins)(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_quadruplet_uneven_batch_matches_loop():
    # identity 3 is a singleton (only a negative); identity 1 has three samples
    x, y = _batch(3, (0, 0, 1, 1, 1, 2, 2, 3))
    expected, first, second = _loop_quadruplet(x, y, 0.5, 0.5)
    assert len(first) == 7 and any(t > 0 for t in second)
    assert QuadrupletLoss(0.5, 0.5)(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_quadruplet_with_two_identities_is_batch_hard_triplet():
    x, y = _batch(4, (0, 0, 0, 1, 1, 1))
    expected, _, second = _loop_quadruplet(x, y, 0.3, 0.15)
    assert second == []
    value = QuadrupletLoss(0.3, 0.15)(x, y)
    assert value.item() == pytest.approx(expected, abs=1e-5)
    assert value.item() == pytest.approx(TripletLoss(0.3)(x, y).item(), abs=1e-6)


def test_hardest_negative_pairs_on_hand_listed_distances():
    d = torch.tensor(
        [
            [0.0, 1.0, 9.0, 9.0, 9.0, 9.0],
            [1.0, 0.0, 9.0, 3.0, 9.0, 9.0],
            [9.0, 9.0, 0.0, 1.0, 2.0, 9.0],
            [9.0, 3.0, 1.0, 0.0, 9.0, 9.0],
            [9.0, 9.0, 2.0, 9.0, 0.0, 1.0],
            [9.0, 9.0, 9.0, 9.0, 1.0, 0.0],
        ]
    )
    first, second, valid = hardest_negative_pairs(d, torch.tensor([0, 0, 1, 1, 2, 2]))
    pairs = [tuple(sorted(p)) for p in zip(first.tolist(), second.tolist())]
    # identity 0 anchors: pairs of {1, 2} -> (2, 4) at 2; identity 1: pairs of {0, 2} -> all 9,
    # the first in row-major order is (0, 4); identity 2: pairs of {0, 1} -> (1, 3) at 3
    assert pairs[0] == pairs[1] == (2, 4)
    assert pairs[4] == pairs[5] == (1, 3)
    assert d[first[2], second[2]].item() == 9.0 and valid.all()


def test_hardest_negative_pairs_invalid_with_two_identities():
    valid = hardest_negative_pairs(torch.zeros(4, 4), torch.tensor([0, 0, 1, 1])).valid
    assert valid.tolist() == [False] * 4


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
def test_quadruplet_no_valid_anchor_gives_zero_with_grad(labels):
    assert _zero_with_grad(QuadrupletLoss(), *_batch(5, labels))


# --- soft hard-mining triplet -----------------------------------------------------------------


def _softmax_mean(ds, sign):
    weights = [math.exp(sign * d) for d in ds]
    return sum(w * d for w, d in zip(weights, ds)) / sum(weights)


def _loop_soft_hard(features, labels, margin=0.3, soft=False):
    xs, ys = features.tolist(), labels.tolist()
    terms = []
    for a in range(len(ys)):
        pos = [_euclid(xs[a], xs[p]) for p in range(len(ys)) if p != a and ys[p] == ys[a]]
        neg = [_euclid(xs[a], xs[n]) for n in range(len(ys)) if ys[n] != ys[a]]
        if pos and neg:
            gap = _softmax_mean(pos, 1.0) - _softmax_mean(neg, -1.0)
            terms.append(math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin))
    return _mean(terms)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("labels", [(0, 0, 1, 1, 2, 2, 3, 3), (0, 0, 0, 1, 1, 1, 2, 3)])
@pytest.mark.parametrize("soft", [False, True])
def test_soft_hard_triplet_matches_loop(seed, labels, soft):
    x, y = _batch(seed, labels)
    value = SoftHardTripletLoss(0.3, soft_margin=soft)(x, y)
    assert value.item() == pytest.approx(_loop_soft_hard(x, y, 0.3, soft), abs=1e-5)


def test_soft_hard_is_at_most_batch_hard():
    # softmax weights favour hard samples: the weighted gap is at most the batch-hard gap
    x, y = _batch(2)
    soft_hard = SoftHardTripletLoss(5.0)(x, y).item()
    assert 0.0 < soft_hard <= TripletLoss(5.0)(x, y).item() + 1e-6


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
def test_soft_hard_no_valid_anchor_gives_zero_with_grad(labels):
    assert _zero_with_grad(SoftHardTripletLoss(), *_batch(6, labels))


def test_gradcheck_soft_hard_soft_margin():
    x, y = _batch(7, (0, 0, 1, 1, 2, 2), dim=3)
    x = x.double().requires_grad_(True)
    loss = SoftHardTripletLoss(soft_margin=True)
    assert torch.autograd.gradcheck(lambda f: loss(f, y), (x,))


# --- margin sample mining ---------------------------------------------------------------------


def _loop_msml(features, labels, margin):
    xs, ys = features.tolist(), labels.tolist()
    pos, neg = [], []
    for i, j in itertools.combinations(range(len(ys)), 2):
        (pos if ys[i] == ys[j] else neg).append(_euclid(xs[i], xs[j]))
    return max(0.0, max(pos) - min(neg) + margin)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.3, 2.0])
def test_margin_sample_mining_matches_loop(seed, margin):
    x, y = _batch(seed, (0, 0, 1, 1, 1, 2, 2, 3))
    value = MarginSampleMiningLoss(margin)(x, y)
    assert value.item() == pytest.approx(_loop_msml(x, y, margin), abs=1e-5)


@pytest.mark.parametrize("margin, expected", [(0.3, 0.0), (1.5, 0.5)])
def test_margin_sample_mining_on_hand_listed_points(margin, expected):
    # 1-D: positive pairs at 1 and 0.5 (hardest 1); negative pairs at 3, 3.5, 2, 2.5 (hardest 2)
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    value = MarginSampleMiningLoss(margin)(x, torch.tensor([0, 0, 1, 1]))
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_margin_sample_mining_gradient_reaches_only_the_two_hardest_pairs():
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]], requires_grad=True)
    MarginSampleMiningLoss(1.5)(x, torch.tensor([0, 0, 1, 1])).backward()
    # d(0, 1) grows with x1 - x0; d(1, 2) shrinks with x2 - x1; sample 3 is in neither pair
    assert x.grad.squeeze(1).tolist() == pytest.approx([-1.0, 2.0, -1.0, 0.0], abs=1e-5)


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
def test_margin_sample_mining_no_pair_gives_zero_with_grad(labels):
    assert _zero_with_grad(MarginSampleMiningLoss(), *_batch(8, labels))
