"""Contrastive loss, semi-hard mining and improved triplet vs. plain Python loops over pairs and
triplets listed with itertools, distances from ``math``."""

import itertools
import math

import pytest
import torch

from reidkit.losses import (
    BatchAllMiner,
    ContrastiveLoss,
    CosineDistance,
    EuclideanDistance,
    ImprovedTripletLoss,
    SemiHardMiner,
    TripletLoss,
)


def _euclid(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return 1.0 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _batch(seed, labels=(0, 0, 1, 1, 2, 2, 3, 3), dim=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=g), torch.tensor(labels)


def _mean(terms):
    return sum(terms) / len(terms)


# --- contrastive ------------------------------------------------------------------------------


def _contrastive_term(d, same, margin):
    return d * d if same else max(0.0, margin - d) ** 2


def _loop_contrastive(features, labels, margin, pairs, dist=_euclid):
    xs, ys = features.tolist(), labels.tolist()
    if pairs == "all":
        chosen = itertools.combinations(range(len(ys)), 2)
    else:
        chosen = [(k, k + 1) for k in range(0, len(ys), 2)]
    return _mean([_contrastive_term(dist(xs[i], xs[j]), ys[i] == ys[j], margin) for i, j in chosen])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin", [1.0, 4.0])
def test_contrastive_all_pairs_matches_loop(seed, margin):
    x, y = _batch(seed)
    value = ContrastiveLoss(margin)(x, y)
    assert value.item() == pytest.approx(_loop_contrastive(x, y, margin, "all"), abs=1e-5)


def test_contrastive_all_pairs_is_plain_mean_over_28_pairs():
    x, y = _batch(2)
    xs = x.tolist()
    pos = [_euclid(xs[i], xs[i + 1]) ** 2 for i in (0, 2, 4, 6)]  # the 4 positive pairs
    neg = [
        max(0.0, 4.0 - _euclid(xs[i], xs[j])) ** 2
        for i, j in itertools.combinations(range(8), 2)
        if i // 2 != j // 2
    ]
    assert len(pos) + len(neg) == 28 and any(t > 0 for t in neg)
    expected = (sum(pos) + sum(neg)) / 28  # not mean(pos) + mean(neg)
    assert ContrastiveLoss(4.0)(x, y).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("labels", [(0, 0, 1, 2, 3, 3), (5, 5, 5, 5, 7, 7)])
def test_contrastive_adjacent_pairs_matches_loop(labels):
    x, y = _batch(3, labels)
    value = ContrastiveLoss(3.0, pairs="adjacent")(x, y)
    assert value.item() == pytest.approx(_loop_contrastive(x, y, 3.0, "adjacent"), abs=1e-5)


def test_contrastive_adjacent_on_hand_listed_pairs():
    # pair (0, 1): same identity, d = 5 -> 25; pair (2, 3): different, d = 0.5 -> (2 - 0.5)^2
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.5]])
    value = ContrastiveLoss(2.0, pairs="adjacent")(x, torch.tensor([4, 4, 0, 1]))
    assert value.item() == pytest.approx((25.0 + 1.5**2) / 2, abs=1e-5)


def test_contrastive_cosine_matches_loop():
    x, y = _batch(4)
    value = ContrastiveLoss(0.8, distance=CosineDistance())(x, y)
    expected = _loop_contrastive(x, y, 0.8, "all", dist=_cosine)
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_far_negatives_only_gives_zero_with_grad():
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], requires_grad=True)
    value = ContrastiveLoss(1.0)(x, torch.tensor([0, 1, 2, 3]))
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_contrastive_adjacent_odd_batch_raises():
    x, y = _batch(5, (0, 0, 1, 1, 2))
    with pytest.raises(ValueError, match=r"pairs='adjacent' needs an even batch.*B=5"):
        ContrastiveLoss(pairs="adjacent")(x, y)


# --- semi-hard mining -------------------------------------------------------------------------


def _loop_semi_hard_terms(features, labels, margin):
    """One term per (a, p) with its closest negative strictly farther than p; others skipped."""
    xs, ys = features.tolist(), labels.tolist()
    terms = []
    for a, p in itertools.permutations(range(len(ys)), 2):
        if ys[a] != ys[p]:
            continue
        d_ap = _euclid(xs[a], xs[p])
        farther = [_euclid(xs[a], xs[n]) for n in range(len(ys)) if ys[n] != ys[a]]
        farther = [d for d in farther if d > d_ap]
        if farther:
            terms.append(max(0.0, d_ap - min(farther) + margin))
    return terms


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("labels", [(0, 0, 1, 1, 2, 2, 3, 3), (0, 0, 0, 1, 1, 2, 2, 2)])
def test_semi_hard_triplet_matches_loop(seed, labels):
    x, y = _batch(seed, labels)
    terms = _loop_semi_hard_terms(x, y, 1.0)
    assert terms and any(t > 0 for t in terms)
    value = TripletLoss(1.0, mining=SemiHardMiner())(x, y)
    assert value.item() == pytest.approx(_mean(terms), abs=1e-5)


def test_semi_hard_miner_on_hand_listed_distances():
    d = torch.tensor(
        [
            [0.0, 2.0, 1.0, 3.0, 2.5],
            [2.0, 0.0, 4.0, 1.0, 5.0],
            [1.0, 4.0, 0.0, 6.0, 0.5],
            [3.0, 1.0, 6.0, 0.0, 7.0],
            [2.5, 5.0, 0.5, 7.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, 1, 1])
    mined = set(zip(*(t.tolist() for t in SemiHardMiner().mine(d, labels))))
    # (0, 1): d=2, negatives 1, 3, 2.5 -> 2.5 (index 4); (1, 0): d=2, negatives 4, 1, 5 -> 4 (2)
    # (2, 3): d=6, negatives 1, 4 -> none farther: skipped; (2, 4): d=0.5 -> 1 (index 0)
    # (3, 2): d=6 -> skipped; (3, 4): d=7 -> skipped; (4, 2): d=0.5 -> 2.5 (0); (4, 3): d=7 -> skip
    assert mined == {(0, 1, 4), (1, 0, 2), (2, 4, 0), (4, 2, 0)}


def test_semi_hard_ties_are_not_farther():
    # rows 1 and 2 coincide: for (0, 1) the negative 2 is exactly as far as the positive, not
    # farther; for (1, 0) the negative is at distance ~0. Both pairs are skipped.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    triplets = SemiHardMiner().mine(EuclideanDistance()(x), torch.tensor([0, 0, 1]))
    assert [t.tolist() for t in triplets] == [[], [], []]
    x[2, 0] = 1.25  # now farther than the positive for (0, 1) only
    triplets = SemiHardMiner().mine(EuclideanDistance()(x), torch.tensor([0, 0, 1]))
    assert [t.tolist() for t in triplets] == [[0], [1], [2]]


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
def test_semi_hard_no_valid_triplet_gives_zero_with_grad(labels):
    x, y = _batch(6, labels)
    x.requires_grad_(True)
    value = TripletLoss(mining=SemiHardMiner())(x, y)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_semi_hard_all_negatives_closer_gives_zero_with_grad():
    # positives far apart, the negative sits between them: no negative is farther than a positive
    x = torch.tensor([[0.0, 0.0], [4.0, 0.0], [2.0, 0.0]], requires_grad=True)
    value = TripletLoss(mining=SemiHardMiner())(x, torch.tensor([0, 0, 1]))
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# --- improved triplet -------------------------------------------------------------------------


def _loop_improved_batch_hard(features, labels, margin, beta, tau):
    xs, ys = features.tolist(), labels.tolist()
    triplet, pull = [], []
    for a in range(len(ys)):
        pos = [_euclid(xs[a], xs[p]) for p in range(len(ys)) if p != a and ys[p] == ys[a]]
        neg = [_euclid(xs[a], xs[n]) for n in range(len(ys)) if ys[n] != ys[a]]
        if pos and neg:
            triplet.append(max(0.0, max(pos) - min(neg) + margin))
            pull.append(max(0.0, max(pos) - tau))
    return _mean(triplet) + beta * _mean(pull)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta, tau", [(0.5, 0.5), (2.0, 3.0), (0.0, 0.0)])
def test_improved_triplet_batch_hard_matches_loop(seed, beta, tau):
    x, y = _batch(seed)
    value = ImprovedTripletLoss(0.3, beta=beta, tau=tau)(x, y)
    expected = _loop_improved_batch_hard(x, y, 0.3, beta, tau)
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_improved_triplet_with_batch_all_averages_pull_over_triplets():
    x, y = _batch(7, (0, 0, 0, 1, 1, 2))
    xs, ys = x.tolist(), y.tolist()
    triplet, pull = [], []
    for a, p, n in itertools.product(range(6), repeat=3):
        if p != a and ys[p] == ys[a] and ys[n] != ys[a]:
            d_ap = _euclid(xs[a], xs[p])
            triplet.append(max(0.0, d_ap - _euclid(xs[a], xs[n]) + 0.3))
            pull.append(max(0.0, d_ap - 0.2))
    expected = _mean(triplet) + 0.7 * _mean(pull)
    loss = ImprovedTripletLoss(0.3, beta=0.7, tau=0.2, mining=BatchAllMiner("all"))
    assert loss(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_improved_triplet_pull_term_is_absolute():
    # the triplet constraint is met by a wide margin, yet the positive pair at distance 2 > tau
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [50.0, 0.0], [52.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert TripletLoss(0.3)(x, y).item() == 0.0
    value = ImprovedTripletLoss(0.3, beta=0.5, tau=1.5)(x, y)
    assert value.item() == pytest.approx(0.5 * (2.0 - 1.5), abs=1e-5)


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
def test_improved_triplet_no_valid_triplet_gives_zero_with_grad(labels):
    x, y = _batch(8, labels)
    x.requires_grad_(True)
    value = ImprovedTripletLoss(beta=1.0, tau=0.0)(x, y)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
