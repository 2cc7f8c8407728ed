"""CombinedLoss: weighted sum, routing by ``input``, errors; build_loss from config data."""

import pytest
import torch

from reidkit.losses import (
    BatchAllMiner,
    CombinedLoss,
    CosineDistance,
    CrossEntropyLoss,
    EuclideanDistance,
    LossResult,
    MetricLoss,
    TripletLoss,
    build_loss,
    list_losses,
    register_loss,
)
from reidkit.losses import combined as combined_module
from reidkit.models.base import ReIDOutput


def _output(with_logits=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(8, 6, generator=g, requires_grad=True)
    embedding = torch.randn(8, 6, generator=g)  # differs from feature: routing must pick feature
    logits = torch.randn(8, 4, generator=g, requires_grad=True) if with_logits else None
    return ReIDOutput(embedding, feature, logits, ())


LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


class _Recorder(MetricLoss):
    """Returns the sum of its input and remembers the tensor it was given."""

    def __init__(self, input_field):
        super().__init__()
        self.input = input_field
        self.seen = None

    def forward(self, x, labels):
        self.seen = x
        return x.sum()


def test_total_is_weighted_sum_of_independent_parts():
    out = _output()
    combined = CombinedLoss({"ce": (0.5, CrossEntropyLoss()), "triplet": (2.0, TripletLoss())})
    result = combined(out, LABELS)
    ce = CrossEntropyLoss(0.1)(out.logits, LABELS).item()
    tri = TripletLoss(0.3)(out.feature, LABELS).item()
    assert isinstance(result, LossResult) and result.total.dim() == 0
    assert result.parts == pytest.approx({"ce": ce, "triplet": tri}, rel=1e-6)
    assert all(type(v) is float for v in result.parts.values())
    assert result.total.item() == pytest.approx(0.5 * ce + 2.0 * tri, rel=1e-6)


def test_bare_losses_get_weight_one_and_total_backpropagates():
    out = _output()
    result = CombinedLoss({"ce": CrossEntropyLoss(), "triplet": TripletLoss()})(out, LABELS)
    assert result.total.item() == pytest.approx(sum(result.parts.values()), rel=1e-6)
    result.total.backward()
    assert out.logits.grad.abs().sum() > 0 and out.feature.grad.abs().sum() > 0


def test_routes_by_input_attribute():
    out = _output()
    on_logits, on_feature = _Recorder("logits"), _Recorder("feature")
    CombinedLoss({"a": on_logits, "b": on_feature})(out, LABELS)
    assert on_logits.seen is out.logits and on_feature.seen is out.feature


def test_missing_logits_names_the_loss():
    combined = CombinedLoss({"triplet": TripletLoss(), "my_ce": CrossEntropyLoss()})
    with pytest.raises(ValueError, match=r"'my_ce' \(CrossEntropyLoss\) needs output.logits"):
        combined(_output(with_logits=False), LABELS)


def test_feature_only_combination_works_without_logits():
    result = CombinedLoss({"triplet": TripletLoss()})(_output(with_logits=False), LABELS)
    assert set(result.parts) == {"triplet"}


@pytest.mark.parametrize(
    "losses, match",
    [
        ({}, "non-empty"),
        ({"ce": "cross_entropy"}, "must be an nn.Module"),
        ({"lin": torch.nn.Linear(2, 2)}, "must be an nn.Module with input"),
        ({"ce": (-1.0, CrossEntropyLoss())}, "weight of loss 'ce'"),
        ({"ce": (float("nan"), CrossEntropyLoss())}, "weight of loss 'ce'"),
        ({"a.b": CrossEntropyLoss()}, "without '.'"),
    ],
)
def test_bad_mapping_raises(losses, match):
    with pytest.raises(ValueError, match=match):
        CombinedLoss(losses)


SPEC = {
    "ce": {"weight": 1.0, "label_smoothing": 0.1},
    "triplet": {
        "weight": 1.0,
        "margin": 0.3,
        "soft_margin": False,
        "distance": "euclidean",
        "mining": "batch_hard",
    },
}


def test_build_loss_from_spec_matches_hand_built():
    built = build_loss(SPEC)
    by_hand = CombinedLoss({"ce": (1.0, CrossEntropyLoss(0.1)), "triplet": (1.0, TripletLoss(0.3))})
    out = _output(seed=1)
    assert built(out, LABELS).parts == pytest.approx(by_hand(out, LABELS).parts, rel=1e-6)
    assert built.weights == {"ce": 1.0, "triplet": 1.0}


def test_build_loss_options_reach_the_objects():
    built = build_loss(
        {
            "ce": {"weight": 0.5, "label_smoothing": 0.0},
            "tri_cos": {"type": "triplet", "distance": "cosine", "mining": "batch_all"},
            "tri_sq": {"type": "triplet", "distance": "squared_euclidean", "soft_margin": True},
        }
    )
    assert built.weights["ce"] == 0.5 and built.losses["ce"].label_smoothing == 0.0
    cos = built.losses["tri_cos"]
    assert isinstance(cos.distance, CosineDistance) and isinstance(cos.mining, BatchAllMiner)
    sq = built.losses["tri_sq"]
    assert isinstance(sq.distance, EuclideanDistance) and sq.distance.squared and sq.soft_margin


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"center": {}}, r"unknown loss 'center'; valid: \[.*'ce'.*'triplet'"),
        ({"ce": {"smoothing": 0.1}}, r"unknown key\(s\) \['smoothing'\].*'label_smoothing'"),
        ({"triplet": {"distance": "manhattan"}}, r"unknown distance 'manhattan'; valid: \["),
        ({"triplet": {"mining": "hardest"}}, r"unknown mining 'hardest'; valid: \["),
        ({"ce": 1.0}, "must be a mapping"),
        ({}, "non-empty"),
    ],
)
def test_build_loss_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        build_loss(spec)


def test_register_loss_adds_a_name(monkeypatch):
    monkeypatch.setattr(combined_module, "_LOSSES", dict(combined_module._LOSSES))

    @register_loss("sum_test")
    def _sum_loss(scale: float = 1.0):
        recorder = _Recorder("feature")
        recorder.scale = scale
        return recorder

    assert "sum_test" in list_losses()
    built = build_loss({"sum_test": {"weight": 3.0, "scale": 2.0}})
    assert built.losses["sum_test"].scale == 2.0
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("sum_test")(_sum_loss)
