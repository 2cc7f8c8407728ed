"""AlignedReID local distance and local triplet loss vs. plain recursive Python references."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reidkit.losses import build_loss
from reidkit.losses.aligned import (
    LocalTripletLoss,
    local_distance,
    local_distance_matrix,
    paired_local_distance,
    shortest_path,
)
from reidkit.models import ReIDOutput


def recursive_shortest_path(matrix: list[list[float]]) -> float:
    """Shortest right/down path from (0, 0) to (S-1, S-1), by memoised recursion."""
    s = len(matrix)

    @functools.lru_cache(maxsize=None)
    def best(i: int, j: int) -> float:  # shortest path from (0, 0) ending at (i, j)
        if i == 0 and j == 0:
            return matrix[0][0]
        before = [best(i - 1, j)] if i > 0 else []
        before += [best(i, j - 1)] if j > 0 else []
        return matrix[i][j] + min(before)

    return best(s - 1, s - 1)


def loop_local_distance(x: list[list[float]], y: list[list[float]]) -> float:
    """Local distance of two stripe lists with math: (e^t - 1) / (e^t + 1), then the path."""
    matrix = []
    for xi in x:
        row = []
        for yj in y:
            t = math.sqrt(sum((a - b) ** 2 for a, b in zip(xi, yj)))
            row.append((math.exp(t) - 1.0) / (math.exp(t) + 1.0))
        matrix.append(row)
    return recursive_shortest_path(matrix)


def _loop_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = [[loop_local_distance(a, b) for b in y.tolist()] for a in x.tolist()]
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 6])
def test_shortest_path_matches_recursion(s):
    dist = torch.randn(3, 2, s, s, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
    expected = [[recursive_shortest_path(m) for m in batch] for batch in dist.tolist()]
    result = shortest_path(dist)
    assert result.shape == (3, 2)
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))


def test_shortest_path_of_a_known_matrix():
    dist = torch.tensor([[1.0, 9.0, 9.0], [1.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    assert shortest_path(dist).item() == pytest.approx(5.0)  # down, down, right, right


def test_shortest_path_gradient_matches_finite_differences():
    dist = torch.rand(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(shortest_path, (dist,))


def test_local_distance_matches_loop():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 4, 5, dtype=torch.float64, generator=gen) * 0.5
    result = local_distance(x, y)
    assert result.shape == (3, 4)
    torch.testing.assert_close(result, _loop_matrix(x, y), rtol=1e-6, atol=1e-6)


def test_local_distance_range_and_symmetry():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen)
    d = local_distance(x, y)
    torch.testing.assert_close(local_distance(y, x), d.T)  # the transposed path
    assert torch.all((d >= 0) & (d < 2 * 5 - 1))


def test_self_distance_is_zero_only_for_uniform_stripes():
    # The path visits 2S - 1 cells, S - 1 of them off the diagonal, so an image is at distance
    # 0 from itself only when its stripes coincide.
    uniform = torch.randn(1, 1, 4, dtype=torch.float64).expand(1, 5, 4)
    assert local_distance(uniform, uniform).item() < 1e-5
    varied = torch.randn(1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert local_distance(varied, varied).item() > 0.1


def test_paired_local_distance_matches_loop():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=gen)
    expected = [loop_local_distance(a, b) for a, b in zip(x.tolist(), y.tolist())]
    result = paired_local_distance(x, y)
    torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("block_size", [None, 1, 2, 10])
def test_local_distance_matrix_matches_loop(block_size):
    gen = torch.Generator().manual_seed(4)
    q, g = torch.randn(5, 3, 4, generator=gen), torch.randn(6, 3, 4, generator=gen)
    q.requires_grad_(True)
    result = local_distance_matrix(q, g, block_size=block_size)
    assert result.dtype == torch.float32 and not result.requires_grad
    torch.testing.assert_close(result.double(), _loop_matrix(q.detach(), g), rtol=1e-5, atol=1e-5)


def _loss_reference(glob, local, labels, margin, mine_on):
    """Batch-hard local triplet loss with Python loops; pairs chosen on ``mine_on``."""
    g, loc, ys = glob.tolist(), local.tolist(), labels.tolist()

    def euclid(u, v):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))

    def mining_distance(i, j):
        return euclid(g[i], g[j]) if mine_on == "global" else loop_local_distance(loc[i], loc[j])

    terms = []
    for a in range(len(ys)):
        pos = [p for p in range(len(ys)) if p != a and ys[p] == ys[a]]
        neg = [n for n in range(len(ys)) if ys[n] != ys[a]]
        p = max(pos, key=lambda j: mining_distance(a, j))
        n = min(neg, key=lambda j: mining_distance(a, j))
        d_ap, d_an = loop_local_distance(loc[a], loc[p]), loop_local_distance(loc[a], loc[n])
        terms.append(max(0.0, d_ap - d_an + margin))
    return sum(terms) / len(terms)


def test_local_triplet_mines_on_global_distance():
    # Global features on a line choose the pairs; random local features would choose others.
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    glob = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0], [14.0]], dtype=torch.float64)
    local = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    margin = 20.0  # every term active, so the value depends on every chosen pair
    on_global = _loss_reference(glob, local, labels, margin, "global")
    on_local = _loss_reference(glob, local, labels, margin, "local")
    assert abs(on_global - on_local) > 1e-3  # the case tells the two minings apart
    output = ReIDOutput(glob, glob, None, (), local_feature=local)
    loss = LocalTripletLoss(margin=margin)(output, labels)
    assert loss.item() == pytest.approx(on_global, rel=1e-9)


def test_local_triplet_gradients_are_finite_and_reach_local_only():
    labels = torch.tensor([0, 0, 1, 1])
    feature = torch.randn(4, 6, requires_grad=True)
    local = torch.randn(4, 3, 5)
    local[1] = local[0]  # duplicate stripes: distance at the sqrt clamp
    local.requires_grad_(True)
    output = ReIDOutput(feature, feature, None, (), local_feature=local)
    LocalTripletLoss(margin=2.0)(output, labels).backward()
    assert torch.isfinite(local.grad).all() and local.grad.abs().sum() > 0
    assert feature.grad is None


def test_local_triplet_without_valid_triplet_is_zero():
    local = torch.randn(3, 2, 4, requires_grad=True)
    output = ReIDOutput(torch.randn(3, 5), torch.randn(3, 5), None, (), local_feature=local)
    loss = LocalTripletLoss()(output, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(local.grad, torch.zeros_like(local))


def test_build_loss_routes_whole_output():
    gen = torch.Generator().manual_seed(6)
    labels = torch.tensor([0, 0, 1, 1])
    glob, local = torch.randn(4, 3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    output = ReIDOutput(glob, glob, None, (), local_feature=local)
    result = build_loss({"aligned_local_triplet": {"weight": 2.0, "margin": 0.7}})(output, labels)
    expected = _loss_reference(glob, local, labels, 0.7, "global")
    assert result.parts["aligned_local_triplet"] == pytest.approx(expected, rel=1e-5)
    assert result.total.item() == pytest.approx(2.0 * expected, rel=1e-5)


@pytest.mark.parametrize(
    "dist",
    [
        torch.zeros(3),  # 1-D
        torch.zeros(2, 3),  # not square
        torch.zeros(4, 2, 3),  # not square, batched
        torch.zeros(0, 0),  # S = 0
        torch.zeros(2, 2, dtype=torch.long),  # not floating
    ],
)
def test_shortest_path_rejects_bad_shapes(dist):
    with pytest.raises(ValueError, match="dist"):
        shortest_path(dist)


@pytest.mark.parametrize(
    "x, y",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3)),  # 2-D
        (torch.zeros(2, 3, 4), torch.zeros(2, 4, 4)),  # S differs
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)),  # C differs
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.float64)),  # dtype differs
    ],
)
def test_local_distances_reject_bad_shapes(x, y):
    for fn in (local_distance, paired_local_distance, local_distance_matrix):
        with pytest.raises(ValueError):
            fn(x, y)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="same shape"):
        paired_local_distance(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match="block_size"):
        local_distance_matrix(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), block_size=0)
    with pytest.raises(ValueError, match="margin"):
        LocalTripletLoss(margin=-1.0)
    with pytest.raises(TypeError, match="mining"):
        LocalTripletLoss(mining="batch_hard")


def test_local_triplet_rejects_bad_output():
    labels = torch.tensor([0, 0, 1])
    feature = torch.randn(3, 4)
    with pytest.raises(ValueError, match="local_feature"):
        LocalTripletLoss()(ReIDOutput(feature, feature, None, ()), labels)
    wrong_b = ReIDOutput(feature, feature, None, (), local_feature=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="local_feature"):
        LocalTripletLoss()(wrong_b, labels)
    with pytest.raises(ValueError, match="labels"):
        LocalTripletLoss()(ReIDOutput(feature, feature, None, (), torch.randn(3, 2, 4)), labels[:2])
