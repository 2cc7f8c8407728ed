"""The metric family through the config boundary (registry, build_loss with cross-entropy) and
the contract every member shares: bad arguments, bad input, finite gradients on duplicates."""

import math

import pytest
import torch

from reidkit.losses import (
    BatchHardMiner,
    ContrastiveLoss,
    CosineDistance,
    CrossEntropyLoss,
    EuclideanDistance,
    ImprovedTripletLoss,
    MarginSampleMiningLoss,
    QuadrupletLoss,
    SemiHardMiner,
    SoftHardTripletLoss,
    TripletLoss,
    build_loss,
    list_losses,
    make_miner,
)
from reidkit.models.base import ReIDOutput

NAMES = (
    "contrastive",
    "improved_triplet",
    "quadruplet",
    "soft_hard_triplet",
    "margin_sample_mining",
)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _output(seed=0):
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(8, 6, generator=g, requires_grad=True)
    logits = torch.randn(8, 4, generator=g, requires_grad=True)
    return ReIDOutput(torch.randn(8, 6, generator=g), feature, logits, ())


def test_every_member_is_registered():
    assert set(NAMES) <= set(list_losses())


# (registered name, config options, the same loss built by hand)
COMBINATIONS = [
    ("contrastive", {"margin": 0.5, "distance": "cosine"}, ContrastiveLoss(0.5, CosineDistance())),
    ("contrastive", {"margin": 3.0, "pairs": "adjacent"}, ContrastiveLoss(3.0, pairs="adjacent")),
    (
        "improved_triplet",
        {"margin": 0.3, "beta": 0.5, "tau": 0.5, "mining": "semi_hard"},
        ImprovedTripletLoss(0.3, beta=0.5, tau=0.5, mining=SemiHardMiner()),
    ),
    ("quadruplet", {"margin1": 0.5, "margin2": 0.25}, QuadrupletLoss(0.5, 0.25)),
    ("soft_hard_triplet", {"soft_margin": True}, SoftHardTripletLoss(soft_margin=True)),
    ("margin_sample_mining", {"margin": 2.0}, MarginSampleMiningLoss(2.0)),
    ("triplet", {"margin": 1.0, "mining": "semi_hard"}, TripletLoss(1.0, mining=SemiHardMiner())),
]


@pytest.mark.parametrize("name, options, by_hand", COMBINATIONS)
def test_combined_with_cross_entropy_is_weighted_sum_of_parts(name, options, by_hand):
    spec = {"ce": {"weight": 0.5, "label_smoothing": 0.1}, name: {"weight": 2.0, **options}}
    combined = build_loss(spec)
    out = _output()
    result = combined(out, LABELS)
    ce = CrossEntropyLoss(0.1)(out.logits, LABELS).item()
    metric = by_hand(out.feature, LABELS).item()
    assert metric > 0  # the metric part really contributes
    assert result.parts == pytest.approx({"ce": ce, name: metric}, rel=1e-6)
    assert result.total.item() == pytest.approx(0.5 * ce + 2.0 * metric, rel=1e-6)
    result.total.backward()
    assert out.logits.grad.abs().sum() > 0 and out.feature.grad.abs().sum() > 0


def test_config_options_reach_the_objects():
    built = build_loss(
        {
            "c": {"type": "contrastive", "distance": "squared_euclidean", "pairs": "adjacent"},
            "i": {"type": "improved_triplet", "mining": "batch_all", "beta": 0.1, "tau": 0.2},
            "q": {"type": "quadruplet", "distance": "cosine"},
        }
    ).losses
    assert built["c"].distance.squared and built["c"].pairs == "adjacent"
    assert type(built["i"].triplet.mining).__name__ == "BatchAllMiner"
    assert (built["i"].beta, built["i"].tau) == (0.1, 0.2)
    assert isinstance(built["q"].distance, CosineDistance)
    assert (built["q"].margin1, built["q"].margin2) == (0.3, 0.15)


def test_unknown_loss_error_lists_every_member():
    with pytest.raises(ValueError, match=r"unknown loss 'quadruple'; valid: \[") as info:
        build_loss({"quadruple": {}})
    assert all(f"'{name}'" in str(info.value) for name in NAMES)


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"improved_triplet": {"mining": "hardest"}},
            r"unknown mining 'hardest'; valid: \[.*'semi_hard'\]",
        ),
        ({"quadruplet": {"distance": "l1"}}, r"unknown distance 'l1'; valid: \['cosine', 'eucl"),
        ({"quadruplet": {"margin": 0.3}}, r"unknown key\(s\) \['margin'\].*'margin1', 'margin2'"),
        ({"contrastive": {"pairs": "random"}}, r"pairs must be one of \('all', 'adjacent'\)"),
        ({"margin_sample_mining": {"margin": -1.0}}, r"margin must be a finite number >= 0"),
    ],
)
def test_build_loss_errors_name_the_bad_value(spec, match):
    with pytest.raises(ValueError, match=match):
        build_loss(spec)


def test_make_miner_knows_semi_hard():
    assert isinstance(make_miner("semi_hard"), SemiHardMiner)
    assert isinstance(make_miner("batch_hard"), BatchHardMiner)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ContrastiveLoss(margin=-0.5), ValueError, "margin must be"),
        (lambda: ContrastiveLoss(pairs="random"), ValueError, "pairs must be one of"),
        (lambda: ImprovedTripletLoss(beta=-0.1), ValueError, "beta must be"),
        (lambda: ImprovedTripletLoss(tau=math.inf), ValueError, "tau must be"),
        (lambda: ImprovedTripletLoss(margin=math.nan), ValueError, "margin must be"),
        (lambda: ImprovedTripletLoss(mining="semi_hard"), TypeError, "mining must be"),
        (lambda: QuadrupletLoss(margin2=math.nan), ValueError, "margin2 must be"),
        (lambda: QuadrupletLoss(distance=torch.cdist), TypeError, "distance must be a Distance"),
        (lambda: SoftHardTripletLoss(margin="0.3"), ValueError, "margin must be"),
        (lambda: MarginSampleMiningLoss(distance="euclidean"), TypeError, "distance must be"),
    ],
)
def test_bad_constructor_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


MEMBERS = [
    ContrastiveLoss(),
    ContrastiveLoss(distance=CosineDistance()),
    ContrastiveLoss(pairs="adjacent"),
    TripletLoss(mining=SemiHardMiner()),
    ImprovedTripletLoss(beta=1.0, tau=0.0),
    ImprovedTripletLoss(mining=SemiHardMiner(), distance=EuclideanDistance(squared=True)),
    QuadrupletLoss(),
    QuadrupletLoss(distance=CosineDistance()),
    SoftHardTripletLoss(),
    SoftHardTripletLoss(soft_margin=True, distance=EuclideanDistance(squared=True)),
    MarginSampleMiningLoss(),
]


@pytest.mark.parametrize("loss", MEMBERS, ids=lambda loss: type(loss).__name__)
def test_duplicate_embeddings_have_finite_gradients(loss):
    # rows 0, 1 coincide (same identity, d = 0); rows 2, 3 coincide (different identities)
    x = torch.tensor(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.6], [0.0, 1.0], [1, 0]]
    )
    x.requires_grad_(True)
    value = loss(x, torch.tensor([0, 0, 1, 2, 1, 2, 3, 3]))
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("loss", MEMBERS, ids=lambda loss: type(loss).__name__)
def test_every_member_consumes_features_and_validates_them(loss):
    assert loss.input == "feature"
    with pytest.raises(ValueError, match="features must be a"):
        loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has 4 entries"):
        loss(torch.zeros(2, 3), torch.zeros(4, dtype=torch.long))
