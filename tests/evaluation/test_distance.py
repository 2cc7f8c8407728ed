"""compute_distance_matrix against plain double loops and torch's cosine similarity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidkit.evaluation import METRICS, compute_distance_matrix


def loop_squared_euclidean(qf: torch.Tensor, gf: torch.Tensor) -> list[list[float]]:
    q_rows, g_rows = qf.double().tolist(), gf.double().tolist()
    return [[sum((a - b) ** 2 for a, b in zip(q, g)) for g in g_rows] for q in q_rows]


@pytest.fixture
def features() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(5, 7, generator=generator), torch.randn(9, 7, generator=generator)


def test_euclidean_matches_double_loop(features):
    qf, gf = features
    expected = [[math.sqrt(s) for s in row] for row in loop_squared_euclidean(qf, gf)]
    dist = compute_distance_matrix(qf, gf, "euclidean")
    assert dist.dtype == torch.float32 and dist.shape == (5, 9)
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(dist.double(), expected, rtol=1e-5, atol=1e-5)


def test_sqeuclidean_matches_double_loop(features):
    qf, gf = features
    dist = compute_distance_matrix(qf.double(), gf.double(), "sqeuclidean")  # cast to float32
    assert dist.dtype == torch.float32
    expected = torch.tensor(loop_squared_euclidean(qf, gf), dtype=torch.float64)
    torch.testing.assert_close(dist.double(), expected, rtol=1e-5, atol=1e-5)


def test_cosine_is_one_minus_torch_cosine_similarity(features):
    qf, gf = features
    similarity = F.cosine_similarity(qf[:, None, :], gf[None, :, :], dim=2)  # (M, N)
    torch.testing.assert_close(compute_distance_matrix(qf, gf, "cosine"), 1 - similarity)


def test_identical_rows_give_zero_not_nan():
    qf = torch.full((3, 16), 1e3) + torch.arange(3.0)[:, None]
    dist = compute_distance_matrix(qf, qf, "euclidean")
    assert not dist.isnan().any()
    torch.testing.assert_close(dist.diagonal(), torch.zeros(3), rtol=0, atol=1e-2)
    assert (compute_distance_matrix(qf, qf, "sqeuclidean") >= 0).all()


def test_integer_features_are_accepted():
    qf, gf = torch.tensor([[0, 3]]), torch.tensor([[4, 0], [0, 3]])
    dist = compute_distance_matrix(qf, gf)
    torch.testing.assert_close(dist, torch.tensor([[5.0, 0.0]]))


@pytest.mark.parametrize(
    ("qf", "gf", "metric", "error", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(4, 5), "euclidean", ValueError, "same embedding size D"),
        (torch.zeros(3), torch.zeros(4, 3), "euclidean", ValueError, r"qf must be 2-D"),
        (torch.zeros(2, 3), torch.zeros(1, 4, 3), "cosine", ValueError, r"gf must be 2-D"),
        (torch.zeros(2, 3), torch.zeros(4, 3), "l1", ValueError, "euclidean.*sqeuclidean.*cosine"),
        ([[0.0, 1.0]], torch.zeros(4, 2), "euclidean", TypeError, "qf must be a torch.Tensor"),
        (torch.zeros(2, 3, dtype=torch.bool), torch.zeros(4, 3), "cosine", TypeError, "real"),
    ],
)
def test_bad_inputs_raise(qf, gf, metric, error, message):
    with pytest.raises(error, match=message):
        compute_distance_matrix(qf, gf, metric)


def test_metrics_lists_the_valid_names():
    assert METRICS == ("euclidean", "sqeuclidean", "cosine")


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_prepared_gallery_equals_compute_distance_matrix(metric):
    from reidkit.evaluation.distance import gallery_distances

    torch.manual_seed(0)
    q, g = torch.randn(7, 16, dtype=torch.float64), torch.randn(50, 16)
    # the same values up to float32 rounding (the product may come from another BLAS)
    torch.testing.assert_close(gallery_distances(g, metric)(q), compute_distance_matrix(q, g, metric),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same embedding size"):
        gallery_distances(g, metric)(torch.randn(2, 5))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_prepared_gallery_into_a_reused_buffer_gives_the_same_values(metric):
    # evaluate_rank_from_features writes each block into a pooled buffer; a stale buffer
    # (here: NaN-filled) must be overwritten entirely and give the very same float32 values.
    from reidkit.evaluation.distance import gallery_distances

    torch.manual_seed(1)
    q, g = torch.randn(33, 64), torch.randn(301, 64)
    distances = gallery_distances(g, metric)
    buffer = torch.full((40, 301), float("nan"))
    got = distances(q, out=buffer[:33])
    assert got.data_ptr() == buffer.data_ptr()
    assert torch.equal(got, distances(q))
    torch.testing.assert_close(got, compute_distance_matrix(q, g, metric), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_ranking_keys_sort_rows_like_the_distances(metric):
    from reidkit.evaluation.distance import gallery_ranking_keys

    torch.manual_seed(2)
    q, g = torch.randn(20, 8), torch.randn(60, 8)
    keys = gallery_ranking_keys(g, metric)(q)
    q64, g64 = q.double(), g.double()
    if metric == "cosine":
        expected = -(F.normalize(q64, dim=1) @ F.normalize(g64, dim=1).T)
    else:  # the squared distance minus the row's ||q||^2, halved
        expected = (g64.pow(2).sum(1) / 2) - q64 @ g64.T
    torch.testing.assert_close(keys.double(), expected, rtol=0, atol=1e-5)
    distances = compute_distance_matrix(q, g, metric).double()
    assert torch.equal(keys.argsort(dim=1, stable=True), distances.argsort(dim=1, stable=True))
    buffer = torch.full((25, 60), float("nan"))
    assert torch.equal(gallery_ranking_keys(g, metric)(q, out=buffer[:20]), keys)


def test_unknown_gemm_choice_warns_naming_it(monkeypatch):
    from reidkit.evaluation import distance

    monkeypatch.setenv(distance.GEMM_ENV, "mkl")
    distance.numpy_gemm_default.cache_clear()
    try:
        with pytest.warns(UserWarning, match="REIDKIT_GEMM='mkl'"):
            choice = distance.numpy_gemm_default()
        monkeypatch.delenv(distance.GEMM_ENV)
        distance.numpy_gemm_default.cache_clear()
        assert choice == distance.numpy_gemm_default()  # ignored: the CPU's default
    finally:
        distance.numpy_gemm_default.cache_clear()
