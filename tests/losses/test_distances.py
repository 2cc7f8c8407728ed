"""Distances vs. plain Python loops over hand-listed pairs, and gradients at zero distance."""

import itertools
import math

import pytest
import torch

from reidkit.losses import CosineDistance, EuclideanDistance


def _norm(v):
    return math.sqrt(sum(a * a for a in v))


def _loop_matrix(x, y, pair_distance):
    xs, ys = x.tolist(), y.tolist()
    out = [[0.0] * len(ys) for _ in xs]
    for i, j in itertools.product(range(len(xs)), range(len(ys))):
        out[i][j] = pair_distance(xs[i], ys[j])
    return torch.tensor(out)


def _euclid(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _cosine(u, v):
    return 1.0 - sum(a * b for a, b in zip(u, v)) / (_norm(u) * _norm(v))


def _unit(v):
    n = _norm(v)
    return [a / n for a in v]


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)


def test_euclidean_matches_loop(xy):
    x, y = xy
    torch.testing.assert_close(EuclideanDistance()(x, y), _loop_matrix(x, y, _euclid))


def test_squared_euclidean_matches_loop(xy):
    x, y = xy
    expected = _loop_matrix(x, y, lambda u, v: _euclid(u, v) ** 2)
    torch.testing.assert_close(EuclideanDistance(squared=True)(x, y), expected)


def test_normalized_euclidean_matches_loop(xy):
    x, y = xy
    expected = _loop_matrix(x, y, lambda u, v: _euclid(_unit(u), _unit(v)))
    torch.testing.assert_close(EuclideanDistance(normalize=True)(x, y), expected)


def test_cosine_matches_loop(xy):
    x, y = xy
    torch.testing.assert_close(CosineDistance()(x, y), _loop_matrix(x, y, _cosine))


@pytest.mark.parametrize("distance", [EuclideanDistance(), CosineDistance()])
def test_single_argument_compares_with_itself(xy, distance):
    x, _ = xy
    torch.testing.assert_close(distance(x), distance(x, x))
    assert distance(x).diagonal().abs().max() < 1e-3  # smaller is closer: self is closest


@pytest.mark.parametrize(
    "distance", [EuclideanDistance(), EuclideanDistance(squared=True), CosineDistance()]
)
def test_gradient_finite_with_duplicate_vectors(distance):
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.5]], requires_grad=True)
    distance(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "x, y",
    [
        (torch.zeros(3), torch.zeros(2, 3)),  # x not 2-D
        (torch.zeros(2, 3), torch.zeros(2, 4)),  # D differs
        (torch.zeros(2, 3, dtype=torch.int64), None),  # not floating
    ],
)
def test_bad_input_raises(x, y):
    with pytest.raises(ValueError, match="must"):
        EuclideanDistance()(x, y)
