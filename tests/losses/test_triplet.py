"""TripletLoss and miners vs. a plain Python loop over all (anchor, positive, negative) triples."""

import itertools
import math

import pytest
import torch

from reidkit.losses import (
    BatchAllMiner,
    BatchHardMiner,
    CosineDistance,
    EuclideanDistance,
    TripletLoss,
    TripletMiner,
    Triplets,
)


def _euclid(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return 1.0 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _valid_triples(labels):
    """All (a, p, n): p != a with the anchor's label, n with another label."""
    ys = labels.tolist()
    for a, p, n in itertools.product(range(len(ys)), repeat=3):
        if p != a and ys[p] == ys[a] and ys[n] != ys[a]:
            yield a, p, n


def _triplet_term(d_ap, d_an, margin, soft):
    gap = d_ap - d_an
    return math.log(1.0 + math.exp(gap)) if soft else max(0.0, gap + margin)


def _loop_batch_hard(features, labels, margin=0.3, soft=False, dist=_euclid):
    xs = features.tolist()
    hardest = {}  # anchor -> [max d(a, p), min d(a, n)]
    for a, p, n in _valid_triples(labels):
        d_ap, d_an = dist(xs[a], xs[p]), dist(xs[a], xs[n])
        far, near = hardest.get(a, (-math.inf, math.inf))
        hardest[a] = (max(far, d_ap), min(near, d_an))
    terms = [_triplet_term(far, near, margin, soft) for far, near in hardest.values()]
    return sum(terms) / len(terms) if terms else 0.0


def _loop_all_terms(features, labels, margin=0.3, soft=False, dist=_euclid):
    xs = features.tolist()
    return [
        _triplet_term(dist(xs[a], xs[p]), dist(xs[a], xs[n]), margin, soft)
        for a, p, n in _valid_triples(labels)
    ]


def _batch(seed, labels=(0, 0, 1, 1, 2, 2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), 6, generator=g), torch.tensor(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_batch_hard_matches_loop(seed, margin):
    x, y = _batch(seed)
    value = TripletLoss(margin)(x, y)
    assert value.item() == pytest.approx(_loop_batch_hard(x, y, margin), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_hard_soft_margin_matches_loop(seed):
    x, y = _batch(seed)
    value = TripletLoss(soft_margin=True)(x, y)
    assert value.item() == pytest.approx(_loop_batch_hard(x, y, soft=True), abs=1e-5)


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_cosine_matches_loop(soft):
    x, y = _batch(3)
    value = TripletLoss(0.1, distance=CosineDistance(), soft_margin=soft)(x, y)
    expected = _loop_batch_hard(x, y, 0.1, soft, dist=_cosine)
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_batch_all_matches_loop_for_both_averages():
    x, y = _batch(4)
    terms = _loop_all_terms(x, y, margin=0.5)
    nonzero = [t for t in terms if t > 0]
    assert 0 < len(nonzero) < len(terms)  # the two averages really differ here
    all_loss = TripletLoss(0.5, mining=BatchAllMiner(average="all"))(x, y)
    nonzero_loss = TripletLoss(0.5, mining=BatchAllMiner())(x, y)
    assert all_loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert nonzero_loss.item() == pytest.approx(sum(nonzero) / len(nonzero), abs=1e-5)


def test_batch_all_soft_margin_matches_loop():
    x, y = _batch(5)
    terms = _loop_all_terms(x, y, soft=True)
    value = TripletLoss(mining=BatchAllMiner(), soft_margin=True)(x, y)
    assert value.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def test_singleton_identity_is_skipped_as_anchor_but_used_as_negative():
    x, y = _batch(6, labels=(0, 0, 1, 1, 1, 2))
    assert TripletLoss()(x, y).item() == pytest.approx(_loop_batch_hard(x, y), abs=1e-5)
    terms = _loop_all_terms(x, y)
    all_loss = TripletLoss(mining=BatchAllMiner("all"))(x, y)
    assert all_loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    anchors = BatchHardMiner().mine(EuclideanDistance()(x), y).anchor
    assert anchors.tolist() == [0, 1, 2, 3, 4]


def test_batch_hard_miner_on_hand_listed_distances():
    d = torch.tensor(
        [
            [0.0, 1.0, 3.0, 2.0, 5.0],
            [1.0, 0.0, 4.0, 6.0, 0.5],
            [3.0, 4.0, 0.0, 7.0, 8.0],
            [2.0, 6.0, 7.0, 0.0, 9.0],
            [5.0, 0.5, 8.0, 9.0, 0.0],
        ]
    )
    a, p, n = BatchHardMiner().mine(d, torch.tensor([0, 0, 0, 1, 1]))
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 1, 4, 3]  # farthest same-identity sample
    assert n.tolist() == [3, 4, 3, 0, 1]  # closest other-identity sample


def test_batch_all_miner_lists_every_valid_triplet():
    labels = torch.tensor([0, 0, 0, 1, 1])
    triplets = BatchAllMiner().mine(torch.zeros(5, 5), labels)
    mined = set(zip(*(t.tolist() for t in triplets)))
    assert mined == set(_valid_triples(labels)) and len(mined) == 3 * 2 * 2 + 2 * 1 * 3


class _FirstPairMiner(TripletMiner):
    """Test plug-in: each anchor with its lowest-index positive and negative."""

    def mine(self, distmat, labels):
        firsts = {}
        for a, p, n in _valid_triples(labels):
            firsts.setdefault(a, (a, p, n))
        return Triplets(*(torch.tensor(c, dtype=torch.long) for c in zip(*firsts.values())))


def test_custom_miner_plugs_in():
    x, y = _batch(7)
    xs = x.tolist()
    terms = {}
    for a, p, n in _valid_triples(y):
        terms.setdefault(a, _triplet_term(_euclid(xs[a], xs[p]), _euclid(xs[a], xs[n]), 0.3, False))
    value = TripletLoss(mining=_FirstPairMiner())(x, y)
    assert value.item() == pytest.approx(sum(terms.values()) / len(terms), abs=1e-5)


@pytest.mark.parametrize("labels", [(1, 1, 1, 1), (0, 1, 2, 3)])
@pytest.mark.parametrize("mining", [BatchHardMiner(), BatchAllMiner()])
def test_no_valid_triplet_gives_zero_with_grad(labels, mining):
    x, y = _batch(8, labels)
    x.requires_grad_(True)
    value = TripletLoss(mining=mining)(x, y)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize(
    "loss",
    [
        TripletLoss(),
        TripletLoss(soft_margin=True),
        TripletLoss(mining=BatchAllMiner("all")),
        TripletLoss(distance=EuclideanDistance(squared=True)),
        TripletLoss(distance=CosineDistance()),
    ],
)
def test_duplicate_embeddings_have_finite_gradients(loss):
    # rows 0, 1 coincide (same identity: d_ap = 0); rows 2, 3 coincide (different: d_an = 0)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.6]])
    x.requires_grad_(True)
    value = loss(x, torch.tensor([0, 0, 1, 2, 1, 2]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_gradcheck_batch_hard_soft_margin():
    x, y = _batch(9)
    x = x[:, :3].double().requires_grad_(True)
    loss = TripletLoss(soft_margin=True)
    assert torch.autograd.gradcheck(lambda f: loss(f, y), (x,))


def test_consumes_feature():
    assert TripletLoss.input == "feature"


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), "at least 2"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "features must be a"),
        (torch.zeros(3, 4), torch.zeros(4, dtype=torch.long), "labels has 4 entries"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool), "labels must be a"),
    ],
)
def test_bad_input_raises(x, y, match):
    with pytest.raises(ValueError, match=match):
        TripletLoss()(x, y)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(-0.1)
    with pytest.raises(TypeError, match="mining"):
        TripletLoss(mining="batch_hard")
    with pytest.raises(TypeError, match="distance"):
        TripletLoss(distance=torch.cdist)
    with pytest.raises(ValueError, match="average"):
        BatchAllMiner(average="sum")
