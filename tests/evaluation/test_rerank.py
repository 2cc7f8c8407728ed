"""k-reciprocal re-ranking against a plain dense implementation written from the paper.

The reference below follows Zhong et al. (CVPR 2017) and the authors' ``re_ranking.py`` line by
line on dense float64 ``(N, N)`` matrices: column-max normalised squared distances (transposed),
stable argsort ranks, k-reciprocal sets with the 2/3 expansion over round(k1/2)-reciprocal sets,
Gaussian weights, mean over the k2 nearest rows, Jaccard from element-wise minima.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidkit.evaluation import re_ranking, re_ranking_candidates


def dense_re_ranking(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, q = len(x), len(qf)
    sq = (x**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * x @ x.T
    dist = (dist / dist.max(axis=0)).T
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal_sets(k: int) -> list[np.ndarray]:
        """Per i: the members j of i's k + 1 nearest that have i among their k + 1 nearest."""
        near = np.zeros((n, n), dtype=bool)  # near[i, j]: j is among the k + 1 nearest of i
        np.put_along_axis(near, rank[:, : k + 1], True, axis=1)
        return [rank[i, : k + 1][near[rank[i, : k + 1], i]] for i in range(n)]

    k_sets, half_sets = reciprocal_sets(k1), reciprocal_sets(int(np.around(k1 / 2)))
    v = np.zeros((n, n))
    for i in range(n):
        r = k_sets[i]
        expansion = list(r)
        for c in r:
            h = half_sets[c]
            if len(np.intersect1d(h, r)) > 2 / 3 * len(h):
                expansion.extend(h)
        e = np.unique(expansion)
        w = np.exp(-dist[i, e])
        v[i, e] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.empty((q, n))
    for i in range(q):
        nz = np.nonzero(v[i])[0]
        shared = np.minimum(v[i, nz], v[:, nz]).sum(1)
        jaccard[i] = 1 - shared / (2 - shared)
    final = (1 - lam) * jaccard + lam * dist[:q]
    return final[:, q:]


def clustered(num_query: int, num_gallery: int, dim: int = 32, seed: int = 0, dtype=torch.float64):
    """L2-normalised features of ~6 images per identity around random identity centres."""
    g = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    ids = torch.randint(0, max(1, n // 6), (n,), generator=g)
    centres = torch.randn(max(1, n // 6), dim, generator=g, dtype=torch.float64)
    x = centres[ids] + 0.6 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    x = torch.nn.functional.normalize(x, dim=1).to(dtype)
    return x[:num_query], x[num_query:]


def assert_same_result(ours: torch.Tensor, expected: np.ndarray) -> None:
    """Values within 1e-5, and the same ranking.

    Same ranking: our order sorts the reference's distances, so it differs from the reference's
    order only among reference values equal to 1e-9 (with lambda = 0 exact ties are common: two
    gallery items that both hold all of a query's weights share the same mass with it).
    """
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-5)
    order = np.argsort(ours.numpy(), axis=1, kind="stable")
    steps = np.diff(np.take_along_axis(expected, order, axis=1), axis=1)
    assert steps.min() >= -1e-9


@pytest.mark.parametrize(
    "num_query,num_gallery,k1,k2,lam,block_size",
    [
        (40, 160, 20, 6, 0.3, None),  # paper setting, one block
        (300, 1200, 20, 6, 0.3, 256),  # many blocks; the query/gallery border inside a block
        (50, 250, 7, 1, 0.5, 64),  # odd k1: np.around(3.5) = 4; k2 = 1 skips the expansion
        (30, 90, 5, 3, 0.0, 50),  # np.around(2.5) = 2; Jaccard only
        (20, 100, 3, 2, 1.0, 21),  # original distance only; blocks barely larger than k1 + 1
        (3, 5, 20, 6, 0.3, None),  # k1 + 1 and k2 larger than N
    ],
)
def test_matches_dense_reference(num_query, num_gallery, k1, k2, lam, block_size):
    qf, gf = clustered(num_query, num_gallery, seed=num_query)
    ours = re_ranking(qf, gf, k1=k1, k2=k2, lambda_value=lam, block_size=block_size)
    assert ours.dtype == torch.float64
    assert_same_result(ours, dense_re_ranking(qf.numpy(), gf.numpy(), k1, k2, lam))


def test_float32_matches_reference_to_1e5():
    qf, gf = clustered(200, 800, seed=3, dtype=torch.float32)
    ours = re_ranking(qf, gf, block_size=300)
    assert ours.dtype == torch.float32 and ours.shape == (200, 800)
    expected = dense_re_ranking(qf.double().numpy(), gf.double().numpy(), 20, 6, 0.3)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-5)


def test_unnormalised_features_and_numpy_input():
    qf, gf = clustered(25, 75, seed=5)
    qf, gf = (qf * 3 + 0.5).numpy(), (gf * 3 + 0.5).numpy()
    ours = re_ranking(qf, gf, block_size=40)
    assert isinstance(ours, torch.Tensor)
    assert_same_result(ours, dense_re_ranking(qf, gf, 20, 6, 0.3))


def test_candidates_equal_full_result_at_the_listed_pairs():
    qf, cf = clustered(30, 200, seed=7)
    index = torch.stack([torch.randperm(200, generator=torch.Generator().manual_seed(i))[:50] for i in range(30)])
    full = re_ranking(qf, cf, k1=10, k2=4)
    ours = re_ranking_candidates(qf, cf, index, k1=10, k2=4)
    assert ours.shape == (30, 50)
    torch.testing.assert_close(ours, full.gather(1, index), rtol=0, atol=1e-12)


def test_reranking_reorders_some_lists_within_unit_range():
    """Not a no-op on clustered data (some top-10 sets change), and distances stay in [0, 1]."""
    qf, gf = clustered(60, 600, dim=16, seed=11)
    plain = torch.cdist(qf, gf)
    reranked = re_ranking(qf, gf)
    agree = (plain.argsort(1)[:, :10].sort(1).values == reranked.argsort(1)[:, :10].sort(1).values).all(1)
    assert not bool(agree.all())  # re-ranking changes some top-10 lists (it is not a no-op)
    assert bool((reranked >= 0).all() and (reranked <= 1).all())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(k1=0), ValueError, "k1"),
        (dict(k2=1.5), ValueError, "k2"),
        (dict(lambda_value=1.5), ValueError, "lambda_value"),
        (dict(block_size=0), ValueError, "block_size"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    qf, gf = clustered(4, 10)
    with pytest.raises(error, match=match):
        re_ranking(qf, gf, **kwargs)


def test_bad_features():
    qf, gf = clustered(4, 10)
    with pytest.raises(ValueError, match="same D"):
        re_ranking(qf, gf[:, :5])
    with pytest.raises(ValueError, match="2-D"):
        re_ranking(qf[0], gf)
    with pytest.raises(ValueError, match="gallery_features must be a non-empty"):
        re_ranking(qf, gf[:0])
    bad = gf.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(row 3\)"):
        re_ranking(qf, bad)
    with pytest.raises(TypeError, match="query_features"):
        re_ranking([[1.0, 2.0]], gf)
    with pytest.raises(ValueError, match="distinct"):
        re_ranking(torch.ones(2, 3), torch.ones(3, 3))


def test_bad_candidate_index():
    qf, cf = clustered(4, 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        re_ranking_candidates(qf, cf, torch.full((4, 3), 10))
    with pytest.raises(ValueError, match="num_query=4"):
        re_ranking_candidates(qf, cf, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        re_ranking_candidates(qf, cf, torch.zeros(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    qf, gf = clustered(100, 400, seed=13, dtype=torch.float32)
    cpu = re_ranking(qf, gf, device="cpu", block_size=128)
    cuda = re_ranking(qf.cuda(), gf.cuda(), block_size=128)
    assert cuda.is_cuda
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n,block", [(700, 96), (333, 40), (90, 200)])
def test_blocked_neighbours_match_brute_force(n, block):
    """The blocked, thresholded k-NN pass against a full distance matrix and topk."""
    from reidkit.evaluation.rerank import _nearest

    x = torch.randn(n, 24, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    sink = torch.empty(30, n - 30, dtype=torch.float64)
    nb = _nearest(x, 21, block, num_query=30, sink=sink)
    full = torch.cdist(x, x).pow(2)
    expected = full.topk(21, dim=1, largest=False)
    torch.testing.assert_close(nb.index, expected.indices, rtol=0, atol=0)
    torch.testing.assert_close(nb.dist, expected.values, rtol=0, atol=1e-10)
    torch.testing.assert_close(nb.row_max, full.amax(1), rtol=0, atol=1e-10)
    torch.testing.assert_close(sink, full[:30, 30:], rtol=0, atol=1e-10)
