"""combined_distance_matrix vs. explicit addition of separately computed global and local parts."""

from __future__ import annotations

import math

import pytest
import torch

from reidkit.evaluation import compute_distance_matrix
from reidkit.evaluation.aligned import combined_distance_matrix


def _loop_local(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Local distances with plain loops: tanh(t / 2) stripe matrix, then a right/down DP."""
    def one(x, y):
        s = len(x)
        d = [[math.tanh(math.dist(a, b) / 2) for b in y] for a in x]
        best = [[0.0] * s for _ in range(s)]
        for i in range(s):
            for j in range(s):
                prev = [best[i - 1][j]] if i else []
                prev += [best[i][j - 1]] if j else []
                best[i][j] = d[i][j] + (min(prev) if prev else 0.0)
        return best[-1][-1]

    rows = [[one(a, b) for b in g.tolist()] for a in q.tolist()]
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def feats():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(5, 8, generator=gen),
        torch.randn(7, 8, generator=gen),
        torch.randn(5, 3, 4, generator=gen),
        torch.randn(7, 3, 4, generator=gen),
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("local_weight", [1.0, 0.5])
def test_combined_is_global_plus_weighted_local(feats, metric, local_weight):
    qg, gg, ql, gl = feats
    expected = compute_distance_matrix(qg, gg, metric).double() + local_weight * _loop_local(ql, gl)
    result = combined_distance_matrix(qg, gg, ql, gl, metric=metric, local_weight=local_weight)
    assert result.shape == (5, 7) and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_block_size_does_not_change_result(feats):
    full = combined_distance_matrix(*feats, block_size=100)
    torch.testing.assert_close(combined_distance_matrix(*feats, block_size=2), full)


def test_zero_weight_is_global_only(feats):
    qg, gg, ql, gl = feats
    result = combined_distance_matrix(qg, gg, ql, gl, local_weight=0)
    torch.testing.assert_close(result, compute_distance_matrix(qg, gg, "euclidean"))


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan, True, "1"])
def test_bad_weight_raises(feats, weight):
    with pytest.raises(ValueError, match="local_weight"):
        combined_distance_matrix(*feats, local_weight=weight)


def test_mismatched_rows_or_shapes_raise(feats):
    qg, gg, ql, gl = feats
    with pytest.raises(ValueError, match="q_global and q_local"):
        combined_distance_matrix(qg, gg, ql[:4], gl)
    with pytest.raises(ValueError, match="g_local"):
        combined_distance_matrix(qg, gg, ql, gl[:, :, 0])
    with pytest.raises(ValueError):  # stripes S differ between query and gallery
        combined_distance_matrix(qg, gg, ql, gl[:, :2])
    with pytest.raises(ValueError, match="metric"):
        combined_distance_matrix(qg, gg, ql, gl, metric="manhattan")
