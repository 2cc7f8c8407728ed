"""evaluate_rank against a plain per-query loop, a hand-worked example, and bad inputs.

The second half stresses the sort + binary-search ranking: ties resolved by comparison or by a
stable sort, all-equal rows, signed zeros, every input dtype, block boundaries, threads.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reidkit.evaluation import (
    RankResult,
    rank,
    auto_block_size,
    compute_distance_matrix,
    evaluate_rank,
    evaluate_rank_from_features,
)


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Market-1501 protocol written as plainly as possible, one query at a time."""
    num_query, num_gallery = distmat.shape
    cmc_counts = [0] * max_rank
    aps, inps, skipped = [], [], 0
    for q in range(num_query):
        ranked = sorted(range(num_gallery), key=lambda g: (distmat[q][g], g))  # exact values
        kept = [
            g
            for g in ranked
            if g_pids[g] != -1 and not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])
        ]
        hit_ranks = [rank for rank, g in enumerate(kept, start=1) if g_pids[g] == q_pids[q]]
        if not hit_ranks:
            skipped += 1
            continue
        for k in range(hit_ranks[0], max_rank + 1):
            cmc_counts[k - 1] += 1
        aps.append(sum(n / rank for n, rank in enumerate(hit_ranks, start=1)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
    num_valid = len(aps)
    cmc = [count / num_valid for count in cmc_counts]
    return cmc, sum(aps) / num_valid, sum(inps) / num_valid, num_valid, skipped


def random_problem(seed: int, num_query: int = 30, num_gallery: int = 80):
    """Many distance ties, junk (-1) and distractor (0) pids, same-camera items, and queries
    whose identity is absent from the gallery (pid 9) or only seen by their own camera."""
    rng = np.random.default_rng(seed)
    distmat = (rng.integers(0, 4, size=(num_query, num_gallery)) / 2).astype(np.float32)
    g_pids = rng.integers(-1, 6, size=num_gallery)
    g_camids = rng.integers(0, 3, size=num_gallery)
    q_pids = rng.integers(1, 10, size=num_query)
    q_camids = rng.integers(0, 3, size=num_query)
    g_camids[g_pids == 5] = 0  # pid 5 is only seen by camera 0
    return distmat, q_pids, g_pids, q_camids, g_camids


def quietly(function, *args, **kwargs):
    """Call without the expected "skipped queries" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def assert_matches_reference(result: RankResult, expected) -> None:
    cmc, mAP, mINP, num_valid, num_skipped = expected
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
    assert result.mAP == pytest.approx(mAP, abs=1e-12)
    assert result.mINP == pytest.approx(mINP, abs=1e-12)
    assert (result.num_valid_queries, result.num_skipped_queries) == (num_valid, num_skipped)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_size", [1, 7, None])
def test_matches_plain_loop_on_random_inputs(seed, block_size):
    problem = random_problem(seed)
    expected = reference_evaluate(*problem, max_rank=20)
    assert expected[4] > 0, "the generator should produce queries without a valid match"
    result = quietly(evaluate_rank, *problem, max_rank=20, block_size=block_size)
    assert_matches_reference(result, expected)


def test_torch_inputs_and_float64_give_the_same_result():
    problem = random_problem(11)
    expected = quietly(evaluate_rank, *problem, max_rank=10)
    as_torch = [torch.from_numpy(np.asarray(x)) for x in problem]
    as_torch[0] = as_torch[0].double()
    result = quietly(evaluate_rank, *as_torch, max_rank=10, block_size=4)
    assert_matches_reference(result, reference_evaluate(*problem, max_rank=10))
    np.testing.assert_array_equal(result.cmc, expected.cmc)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_signed_zeros_negatives_and_infinities_are_ordered_like_the_reference(dtype):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(7)
    values = np.array([-np.inf, -2.5, -0.0, 0.0, 1e-30, 3.0, np.inf])
    if dtype == np.int32:
        values = np.array([-7, -2, 0, 0, 1, 3, 9])
    rng = np.random.default_rng(7)
    distmat = values[rng.integers(0, len(values), size=distmat.shape)].astype(dtype)
    problem = (distmat, q_pids, g_pids, q_camids, g_camids)
    result = quietly(evaluate_rank, *problem, max_rank=20, block_size=8)
    assert_matches_reference(result, reference_evaluate(*problem, max_rank=20))


def hand_example():
    """Three queries, six gallery items.

    gallery   g0       g1       g2       g3        g4       g5
    pid/cam   1/cam0   0/cam1   1/cam1   -1/cam2   2/cam0   1/cam2
    qA (pid 1, cam 0) 0.1      0.2      0.5      0.3       0.5      0.9
    qB (pid 2, cam 1) 0.4      0.4      0.4      0.0       0.4      0.8
    qC (pid 3, cam 0) no pid 3 in the gallery -> skipped

    qA: order by (distance, index) = g0 g1 g3 g2 g4 g5; drop g0 (same pid, same cam) and g3
        (junk) -> kept g1 g2 g4 g5 with ranks 1..4; hits g2 (rank 2), g5 (rank 4).
        AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 / 4 = 0.5; first hit at rank 2.
    qB: order = g3 g0 g1 g2 g4 g5 (the tie at 0.4 keeps index order); drop g3 -> kept g0 g1
        g2 g4 g5; one hit g4 at rank 4. AP = 1/4; INP = 1/4; first hit at rank 4.
    CMC over the 2 valid queries: rank1 0, rank2 1/2, rank3 1/2, rank4 1, rank5 1.
    mAP = (0.5 + 0.25) / 2 = 0.375; mINP = (0.5 + 0.25) / 2 = 0.375.
    """
    distmat = np.array(
        [
            [0.1, 0.2, 0.5, 0.3, 0.5, 0.9],
            [0.4, 0.4, 0.4, 0.0, 0.4, 0.8],
            [0.3, 0.1, 0.2, 0.6, 0.5, 0.4],
        ],
        dtype=np.float32,
    )
    q_pids, q_camids = np.array([1, 2, 3]), np.array([0, 1, 0])
    g_pids, g_camids = np.array([1, 0, 1, -1, 2, 1]), np.array([0, 1, 1, 2, 0, 2])
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_hand_computed_example():
    with pytest.warns(UserWarning, match="1 queries have no correct match"):
        result = evaluate_rank(*hand_example(), max_rank=5)
    np.testing.assert_allclose(result.cmc, [0, 0.5, 0.5, 1, 1])
    assert result.mAP == pytest.approx(0.375)
    assert result.mINP == pytest.approx(0.375)
    assert (result.num_valid_queries, result.num_skipped_queries) == (2, 1)
    assert result.rank(2) == 0.5
    expected = {"rank1": 0.0, "rank5": 1.0, "mAP": 0.375, "mINP": 0.375}
    assert result.as_dict() == pytest.approx(expected)


def test_short_gallery_pads_cmc_with_its_last_value_and_warns():
    with pytest.warns(UserWarning, match="num_gallery"):
        result = quietly_except_gallery(hand_example())
    np.testing.assert_allclose(result.cmc, [0, 0.5, 0.5, 1, 1, 1, 1, 1, 1, 1])
    assert set(result.as_dict()) == {"rank1", "rank5", "rank10", "mAP", "mINP"}


def quietly_except_gallery(problem):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no correct match")
        return evaluate_rank(*problem, max_rank=10)


def test_result_is_frozen_and_rank_checks_k():
    result = quietly(evaluate_rank, *hand_example(), max_rank=5)
    with pytest.raises(AttributeError):
        result.mAP = 1.0
    with pytest.raises(ValueError):
        result.cmc[0] = 1.0
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        result.rank(6)


def test_all_queries_skipped_raises():
    distmat, q_pids, g_pids, q_camids, g_camids = hand_example()
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_rank(distmat, q_pids + 100, g_pids, q_camids, g_camids, max_rank=5)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda p: (p[0][0],) + p[1:], ValueError, "distmat must be 2-D"),
        (lambda p: (p[0].tolist(),) + p[1:], TypeError, "distmat must be a numpy array"),
        (lambda p: (p[0] > 0,) + p[1:], TypeError, "distmat must hold real"),
        (lambda p: (p[0][:, :0],) + p[1:], ValueError, "at least one query and one gallery"),
        (lambda p: (p[0], p[1][:2]) + p[2:], ValueError, r"q_pids must have shape \(num_query,\)"),
        (lambda p: p[:2] + (p[2][:-1],) + p[3:], ValueError, r"g_pids must have shape"),
        (lambda p: p[:4] + (p[4][:, None],), ValueError, r"g_camids must have shape"),
        (lambda p: p[:3] + (p[3] + 0.5,) + p[4:], TypeError, "q_camids must hold integers"),
    ],
)
def test_bad_inputs_raise(change, error, message):
    with pytest.raises(error, match=message):
        evaluate_rank(*change(hand_example()), max_rank=5)


def test_nan_and_bad_parameters_raise():
    distmat, *labels = hand_example()
    distmat[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quietly(evaluate_rank, distmat, *labels, max_rank=5)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(*hand_example(), max_rank=0)
    with pytest.raises(ValueError, match="block_size"):
        evaluate_rank(*hand_example(), max_rank=5, block_size=0)


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_auto_block_size_keeps_all_blocks_in_flight_within_budget(workers):
    num_gallery = 82_161  # MSMT17
    rows = auto_block_size(num_gallery, num_workers=workers)
    assert rows >= 1 and workers * rows * num_gallery * 16 <= rank.MEMORY_BUDGET_BYTES
    assert workers * (rows + 1) * num_gallery * 16 > rank.MEMORY_BUDGET_BYTES  # the largest
    assert auto_block_size(10**12) == 1


@pytest.mark.parametrize("block_size", [1, 5, None])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_from_features_equals_full_matrix_exactly(metric, block_size):
    # Small integer features make every distance exact, so blocking cannot change any tie.
    rng = np.random.default_rng(3)
    qf = torch.from_numpy(rng.integers(-2, 3, size=(23, 4)).astype(np.float32))
    gf = torch.from_numpy(rng.integers(-2, 3, size=(50, 4)).astype(np.float32))
    _, q_pids, g_pids, q_camids, g_camids = random_problem(5, num_query=23, num_gallery=50)
    labels = (q_pids, g_pids, q_camids, g_camids)
    full = quietly(evaluate_rank, compute_distance_matrix(qf, gf, metric), *labels, max_rank=20)
    blocked = quietly(
        evaluate_rank_from_features, qf, gf, *labels, metric=metric, max_rank=20,
        block_size=block_size,
    )
    np.testing.assert_array_equal(blocked.cmc, full.cmc)
    assert (blocked.mAP, blocked.mINP) == (full.mAP, full.mINP)
    assert blocked.num_skipped_queries == full.num_skipped_queries


@pytest.fixture(params=["numpy", "torch"])
def gemm(request, monkeypatch):
    """Each BLAS choice, hence each block schedule: numpy's (products per thread), torch's
    (one product for all threads' blocks, then ranking)."""
    from reidkit.evaluation import distance

    monkeypatch.setenv(distance.GEMM_ENV, request.param)
    distance.numpy_gemm_default.cache_clear()
    assert distance.numpy_gemm_default() == (request.param == "numpy")
    yield request.param
    distance.numpy_gemm_default.cache_clear()


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_from_features_with_pooled_blocks_equals_full_matrix(metric, gemm):
    # Many blocks ranked on several threads through the pooled, reused block buffers. Integer
    # features up to +-20 make every product exact in float32 (whichever BLAS sums it), with
    # many distinct distances, so the result must equal the full matrix's exactly (cosine: as
    # the reference, the normalisation's rounding leaves no exact ties to compare).
    rng = np.random.default_rng(8)
    qf = torch.from_numpy(rng.integers(-20, 21, size=(61, 32)).astype(np.float32))
    gf = torch.from_numpy(rng.integers(-20, 21, size=(97, 32)).astype(np.float32))
    _, q_pids, g_pids, q_camids, g_camids = random_problem(9, num_query=61, num_gallery=97)
    labels = (q_pids, g_pids, q_camids, g_camids)
    full = quietly(evaluate_rank, compute_distance_matrix(qf, gf, metric), *labels, max_rank=20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        blocked = quietly(
            evaluate_rank_from_features, qf, gf, *labels, metric=metric, max_rank=20, block_size=4
        )
    finally:
        torch.set_num_threads(threads)
    if metric == "cosine":
        assert_matches_reference(
            blocked, reference_evaluate(compute_distance_matrix(qf, gf, metric).numpy(), *labels, max_rank=20)
        )
        return
    np.testing.assert_array_equal(blocked.cmc, full.cmc)
    assert (blocked.mAP, blocked.mINP) == (full.mAP, full.mINP)


def test_from_features_float_features_match_full_matrix_with_either_blas(gemm):
    # Float features: the blocked product may differ from the whole one in the last bits, so
    # compare with a gap between distances far above float32 rounding (no near-ties).
    rng = np.random.default_rng(12)  # a draw whose sorted rows have no gap below 1e-5
    qf = torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32))
    gf = torch.from_numpy(rng.standard_normal((120, 16)).astype(np.float32))
    _, q_pids, g_pids, q_camids, g_camids = random_problem(11, num_query=40, num_gallery=120)
    labels = (q_pids, g_pids, q_camids, g_camids)
    dist = compute_distance_matrix(qf, gf, "euclidean")
    ordered = np.sort(dist.numpy(), axis=1)
    assert np.diff(ordered, axis=1).min() > 1e-5  # every gap >> float32 rounding (~1e-6)
    full = quietly(evaluate_rank, dist, *labels, max_rank=20)
    blocked = quietly(evaluate_rank_from_features, qf, gf, *labels, max_rank=20, block_size=7)
    np.testing.assert_array_equal(blocked.cmc, full.cmc)
    assert blocked.mAP == pytest.approx(full.mAP, abs=1e-12)


def test_from_features_restores_the_blas_thread_count(gemm):
    # The per-thread schedule limits the BLAS to one thread only for the duration of the call.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
    _, q_pids, g_pids, q_camids, g_camids = random_problem(2, num_query=30, num_gallery=80)
    qf, gf = torch.randn(30, 8), torch.randn(80, 8)
    quietly(evaluate_rank_from_features, qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=10, block_size=4)
    assert [pool["num_threads"] for pool in threadpoolctl.threadpool_info()] == before


def test_from_features_cosine_matches_full_matrix_and_reference():
    rng = np.random.default_rng(4)
    qf, gf = rng.normal(size=(20, 8)), rng.normal(size=(40, 8))  # numpy float64 is accepted
    _, q_pids, g_pids, q_camids, g_camids = random_problem(6, num_query=20, num_gallery=40)
    labels = (q_pids, g_pids, q_camids, g_camids)
    blocked = quietly(
        evaluate_rank_from_features, qf, gf, *labels, metric="cosine", max_rank=10, block_size=3
    )
    distmat = compute_distance_matrix(torch.from_numpy(qf), torch.from_numpy(gf), "cosine")
    assert_matches_reference(blocked, reference_evaluate(distmat.numpy(), *labels, max_rank=10))


def test_from_features_bad_inputs_raise():
    _, q_pids, g_pids, q_camids, g_camids = hand_example()
    qf, gf = torch.zeros(3, 4), torch.zeros(6, 4)
    with pytest.raises(ValueError, match="same embedding size D"):
        evaluate_rank_from_features(qf, gf[:, :3], q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate_rank_from_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric="l1")
    with pytest.raises(ValueError, match=r"g_pids must have shape \(num_gallery,\)"):
        evaluate_rank_from_features(qf, gf[:5], q_pids, g_pids, q_camids, g_camids)


# --- stress cases for the sort + binary-search ranking -------------------------------------------


def tie_heavy_problem(seed: int, num_query: int = 24, num_gallery: int = 120, num_values: int = 3):
    """Few distinct distances and large same-pid groups (~20 per row), so rows have many tied
    correct matches with several distinct tied distances; junk, distractors and absent pids."""
    rng = np.random.default_rng(seed)
    distmat = rng.integers(0, num_values, size=(num_query, num_gallery)).astype(np.float32)
    g_pids = rng.integers(-1, 6, size=num_gallery)
    q_pids = rng.integers(1, 8, size=num_query)  # 6 and 7 never appear in the gallery
    return distmat, q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)


@pytest.mark.parametrize("max_tied_values", [-1, 0, 1, 4, 10**9])
@pytest.mark.parametrize("seed", range(3))
def test_every_tie_path_matches_the_plain_loop(monkeypatch, max_tied_values, seed):
    # -1: every row through the stable sort; 10**9: every tie through comparisons.
    monkeypatch.setattr(rank, "_MAX_TIED_VALUES_PER_ROW", max_tied_values)
    for num_values in (1, 2, 5, 1000):
        problem = tie_heavy_problem(seed, num_values=num_values)
        expected = reference_evaluate(*problem, max_rank=30)
        for block_size in (1, 5, None):
            result = quietly(evaluate_rank, *problem, max_rank=30, block_size=block_size)
            assert_matches_reference(result, expected)


def test_all_equal_rows_next_to_untied_rows():
    distmat, *labels = tie_heavy_problem(4, num_query=12)
    rng = np.random.default_rng(4)
    distmat[::2] = rng.permutation(distmat.size // 2).reshape(6, -1)  # distinct values
    distmat[1::4] = 0.0
    distmat[3::4] = -0.0  # all equal too: -0.0 == +0.0
    distmat[3, ::3] = 0.0
    problem = (distmat, *labels)
    result = quietly(evaluate_rank, *problem, max_rank=30, block_size=3)
    assert_matches_reference(result, reference_evaluate(*problem, max_rank=30))


@pytest.mark.parametrize(
    "values",
    [
        np.array([3, -7, 0, 120], dtype=np.int8),
        np.array([3, 7, 0, 250], dtype=np.uint8),
        np.array([-300, 0, 2, 31_000], dtype=np.int16),
        np.array([-5, 0, 2, 2**40, -(2**40)], dtype=np.int64),  # beyond int32
        np.array([1, 2**32 - 1, 2**31, 0], dtype=np.uint32),
        np.array([2**64 - 1, 2**63, 2**63 - 1, 1, 0], dtype=np.uint64),  # beyond int64
        np.array([1.0, 1.0 + 2**-40, 1.0 - 2**-40, -0.0, 0.0, np.inf]),  # not float32 values
        np.array([0.5, -0.0, 0.0, 65504.0, -np.inf], dtype=np.float16),
    ],
    ids=lambda values: str(values.dtype),
)
@pytest.mark.parametrize("max_tied_values", [-1, 4, 10**9])
def test_every_input_dtype_is_ranked_exactly(monkeypatch, values, max_tied_values):
    monkeypatch.setattr(rank, "_MAX_TIED_VALUES_PER_ROW", max_tied_values)
    _, q_pids, g_pids, q_camids, g_camids = random_problem(8, num_query=20, num_gallery=60)
    rng = np.random.default_rng(8)
    distmat = values[rng.integers(0, len(values), size=(20, 60))]
    distmat[:5] = values[rng.integers(0, len(values), size=(5, 60))][:, rng.permutation(60)]
    problem = (distmat, q_pids, g_pids, q_camids, g_camids)
    result = quietly(evaluate_rank, *problem, max_rank=20, block_size=7)
    assert_matches_reference(result, reference_evaluate(*problem, max_rank=20))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.uint8])
def test_torch_low_precision_and_integer_tensors(dtype):
    distmat, *labels = random_problem(9)
    tensor = torch.from_numpy(distmat * 2).to(dtype)
    expected = reference_evaluate(tensor.double().numpy(), *labels, max_rank=10)
    assert_matches_reference(quietly(evaluate_rank, tensor, *labels, max_rank=10), expected)


@pytest.mark.parametrize("block_size", [1, 2, 3, 39, 40, 41, 1000])
def test_block_boundaries_with_rare_ties_and_rows_without_positive(block_size):
    rng = np.random.default_rng(10)
    distmat = rng.random((40, 300), dtype=np.float32)
    distmat[:, 150:170] = distmat[:, 10:30]  # some exact duplicates: a few tied items per row
    g_pids = rng.integers(-1, 12, size=300)
    q_pids = rng.integers(1, 14, size=40)  # 12 and 13: no correct match
    labels = (q_pids, g_pids, rng.integers(0, 4, 40), rng.integers(0, 4, 300))
    expected = reference_evaluate(distmat, *labels, max_rank=50)
    assert expected[4] > 0
    result = quietly(evaluate_rank, distmat, *labels, max_rank=50, block_size=block_size)
    assert_matches_reference(result, expected)


def test_more_threads_give_the_same_result(monkeypatch):
    problem = tie_heavy_problem(11, num_query=50, num_values=4)
    single = quietly(evaluate_rank, *problem, max_rank=20, block_size=4)
    monkeypatch.setattr(rank, "_num_workers", lambda: 3)
    threaded = quietly(evaluate_rank, *problem, max_rank=20, block_size=4)
    np.testing.assert_array_equal(threaded.cmc, single.cmc)
    assert (threaded.mAP, threaded.mINP) == (single.mAP, single.mINP)
    generator = torch.Generator().manual_seed(11)
    qf, gf = torch.randn(50, 8, generator=generator), torch.randn(120, 8, generator=generator)
    full = quietly(evaluate_rank, compute_distance_matrix(qf, gf), *problem[1:], max_rank=20)
    blocked = quietly(evaluate_rank_from_features, qf, gf, *problem[1:], max_rank=20, block_size=6)
    np.testing.assert_array_equal(blocked.cmc, full.cmc)
    assert (blocked.mAP, blocked.mINP) == (full.mAP, full.mINP)


def test_blocks_are_drawn_only_when_a_thread_is_free():
    workers, taken = 3, []

    def blocks():
        for index in range(20):
            assert index - len(taken) <= workers - 1, "more blocks alive than threads"
            yield index

    for result in rank._map_in_order(lambda index: index * 2, blocks(), workers):
        taken.append(result)
    assert taken == [2 * index for index in range(20)]


def test_read_only_memory_mapped_distmat(tmp_path):
    distmat, *labels = random_problem(12)
    path = tmp_path / "distmat.f32"
    distmat.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=distmat.shape)
    result = quietly(evaluate_rank, mapped, *labels, max_rank=20, block_size=8)
    assert_matches_reference(result, reference_evaluate(distmat, *labels, max_rank=20))


def test_nan_is_found_in_junk_columns_and_in_blocks_without_matches():
    distmat, q_pids, g_pids, q_camids, g_camids = hand_example()
    junk = distmat.copy()
    junk[2, 3] = np.nan  # g3 is junk; query 2 (pid 3) has no match at all
    with pytest.raises(ValueError, match=r"NaN \(query row 2\)"):
        quietly(evaluate_rank, junk, q_pids, g_pids, q_camids, g_camids, max_rank=5)
    unmatched = distmat.copy()
    unmatched[2, 1] = np.nan  # in the only block of query 2, which has no same-pid item
    with pytest.raises(ValueError, match=r"NaN \(query row 2\)"):
        quietly(evaluate_rank, unmatched, q_pids, g_pids, q_camids, g_camids, 5, block_size=1)


def test_all_junk_gallery_has_no_valid_query():
    distmat, q_pids, g_pids, q_camids, g_camids = hand_example()
    with pytest.raises(ValueError, match="no query has a correct match"):
        quietly(evaluate_rank, distmat, q_pids, g_pids * 0 - 1, q_camids, g_camids, max_rank=5)
