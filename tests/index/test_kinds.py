"""ivf / ivfpq / hnsw: recall against exact search, training, parameters, removal, rebuild."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from index_testlib import brute_force_topk, clustered_features, entries_for  # noqa: E402

from reidkit.index import BUILD_PARAMS, GalleryIndex, GalleryIndexError  # noqa: E402

DIM = 64
N = 8000
KIND_PARAMS = {"ivf": dict(nlist=64, nprobe=8), "ivfpq": dict(nlist=64, nprobe=8, m=8, nbits=6, refine=8), "hnsw": dict(M=16)}


@pytest.fixture(scope="module")
def data():
    x = clustered_features(N, DIM, seed=11)
    queries = clustered_features(N, DIM, seed=11)[::40] + 0.0  # same identities, new noise below
    rng = np.random.default_rng(5)
    queries = queries + 0.3 * rng.standard_normal(queries.shape).astype(np.float32) / np.sqrt(DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact, _ = brute_force_topk(queries, x, np.arange(N), k=10)
    return x, queries, exact


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_kinds_reach_recall_95(tmp_path, manifest, data, kind):
    x, queries, exact = data
    index = GalleryIndex.create(tmp_path / kind, DIM, manifest, kind=kind, **KIND_PARAMS[kind])
    index.add(x, entries_for(N))
    recall = recall_at_10(index.search(queries, topk=10).ids, exact)
    assert recall >= 0.95, recall
    reopened = GalleryIndex.open(tmp_path / kind)
    np.testing.assert_array_equal(reopened.search(queries, topk=10).ids, index.search(queries, topk=10).ids)


def test_ivf_visiting_every_list_is_exact(tmp_path, manifest, data):
    x, queries, exact = data
    index = GalleryIndex.create(tmp_path / "ivf", DIM, manifest, kind="ivf", nlist=32, nprobe=1)
    index.add(x, entries_for(N))
    np.testing.assert_array_equal(index.search(queries, topk=10, nprobe=32).ids, exact)
    assert recall_at_10(index.search(queries, topk=10).ids, exact) < 1.0  # nprobe=1 is approximate
    opened = GalleryIndex.open(tmp_path / "ivf", nprobe=32)
    np.testing.assert_array_equal(opened.search(queries, topk=10).ids, exact)


def test_ivfpq_refinement_scores_exactly(tmp_path, manifest, data):
    x, queries, _ = data
    index = GalleryIndex.create(tmp_path / "pq", DIM, manifest, kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=16)
    index.add(x, entries_for(N))
    refined = index.search(queries, topk=5, refine=8)
    np.testing.assert_allclose(refined.scores, np.einsum("qd,qkd->qk", queries, x[refined.ids]), atol=1e-5)
    raw = index.search(queries, topk=5, refine=1)
    assert not np.allclose(raw.scores, np.einsum("qd,qkd->qk", queries, x[raw.ids]), atol=1e-4)  # PQ estimates


def test_training_needs_enough_vectors(tmp_path, manifest):
    index = GalleryIndex.create(tmp_path / "ivf", DIM, manifest, kind="ivf", nlist=100)
    with pytest.raises(GalleryIndexError, match="at least 100 vectors.*got 50"):
        index.add(clustered_features(50, DIM), entries_for(50))
    assert len(index) == 0 and index.generation == 0
    pq = GalleryIndex.create(tmp_path / "pq", DIM, manifest, kind="ivfpq", nlist=4)
    with pytest.raises(GalleryIndexError, match="at least 256 vectors"):
        pq.add(clustered_features(200, DIM), entries_for(200))


def test_auto_nlist_and_explicit_train(tmp_path, manifest):
    index = GalleryIndex.create(tmp_path / "ivf", DIM, manifest, kind="ivf")
    index.train(clustered_features(4000, DIM, seed=3))
    assert index.info().state.params["nlist"] == min(round(4 * 4000**0.5), 4000 // 39)
    assert index.info().state.params["nprobe"] == index.info().state.params["nlist"] // 4
    assert index.info().state.trained and len(index) == 0
    with pytest.raises(GalleryIndexError, match="already trained"):
        index.train(clustered_features(4000, DIM))
    index.add(clustered_features(10, DIM), entries_for(10))  # small adds after training are fine
    assert len(GalleryIndex.open(tmp_path / "ivf")) == 10


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_removal_and_stable_ids(tmp_path, manifest, data, kind):
    x, queries, _ = data
    params = dict(KIND_PARAMS[kind], **({"nprobe": 64} if kind != "hnsw" else {}))
    index = GalleryIndex.create(tmp_path / kind, DIM, manifest, kind=kind, **params)
    index.add(x[:2000], entries_for(2000))
    gone = np.arange(0, 2000, 3)
    index.remove(gone)
    result = GalleryIndex.open(tmp_path / kind).search(x[:50], topk=10)
    assert not np.isin(result.ids, gone).any() and (result.ids >= 0).all()
    assert all(e.id % 3 for row in result.metadata for e in row)
    assert len(index) == 2000 - len(gone)


def test_hnsw_keeps_removed_vectors_until_rebuild(tmp_path, manifest, data):
    x, _, _ = data
    index = GalleryIndex.create(tmp_path / "h", DIM, manifest, kind="hnsw", M=16)
    index.add(x[:1000], entries_for(1000))
    faiss_file = index.info().state.faiss_file
    index.remove(np.arange(500))
    assert index.info().faiss_ntotal == 1000 and len(index) == 500
    assert index.info().state.faiss_file == faiss_file  # the graph did not change: not rewritten
    with index.batch():
        index.add(x[:3], entries_for(3, start=1000))
        index.remove([1000])
        hits = index.search(x[:3], topk=1).ids[:, 0]
        assert hits[0] not in range(500) and list(hits[1:]) == [1001, 1002]  # the batch sees its own writes
    before = index.search(x[500:520], topk=5).ids
    index.rebuild()
    assert index.info().faiss_ntotal == 502
    np.testing.assert_array_equal(GalleryIndex.open(tmp_path / "h").search(x[500:520], topk=5).ids[:, 0], before[:, 0])
    assert index.info().state.params["M"] == 16  # rebuild keeps the parameters it is not given


def test_rebuild_changes_the_kind_and_keeps_ids(tmp_path, manifest, data):
    x, queries, exact = data
    index = GalleryIndex.create(tmp_path / "f", DIM, manifest)
    index.add(x, entries_for(N))
    index.remove([1, 2, 3])
    index.rebuild("ivf", nlist=32, nprobe=32)
    reopened = GalleryIndex.open(tmp_path / "f")
    assert reopened.kind == "ivf" and len(reopened) == N - 3
    keep = np.setdiff1d(np.arange(N), [1, 2, 3])
    ref, _ = brute_force_topk(queries, x[keep], keep, 10)
    np.testing.assert_array_equal(reopened.search(queries, topk=10).ids, ref)
    reopened.rebuild(nlist=16)  # same kind, new nlist: nprobe is derived from it again
    assert reopened.info().state.params["nlist"] == 16 and reopened.info().state.params["nprobe"] == 4
    reopened.rebuild("flat")
    assert sorted(p.name for p in (tmp_path / "f").glob("faiss-*")) == []
    np.testing.assert_array_equal(GalleryIndex.open(tmp_path / "f").search(queries, topk=10).ids, ref)


def test_parameter_validation(tmp_path, manifest):
    with pytest.raises(GalleryIndexError, match=r"unknown parameter\(s\) \['nprobe'\].*'hnsw'.*ef_search"):
        GalleryIndex.create(tmp_path / "a", DIM, manifest, kind="hnsw", nprobe=3)
    with pytest.raises(GalleryIndexError, match="unknown index kind 'annoy'"):
        GalleryIndex.create(tmp_path / "b", DIM, manifest, kind="annoy")
    with pytest.raises(GalleryIndexError, match="m=7 must divide the dimension 64"):
        GalleryIndex.create(tmp_path / "c", DIM, manifest, kind="ivfpq", m=7)
    with pytest.raises(GalleryIndexError, match="nlist must be a positive integer"):
        GalleryIndex.create(tmp_path / "d", DIM, manifest, kind="ivf", nlist=0)
    assert not any((tmp_path / n).exists() for n in "abcd")
    index = GalleryIndex.create(tmp_path / "e", DIM, manifest, kind="flat")
    with pytest.raises(GalleryIndexError, match="unknown search parameter"):
        index.search(clustered_features(1, DIM), nprobe=4)
    with pytest.raises(GalleryIndexError, match="needs no training"):
        index.train(clustered_features(10, DIM))
    assert set(BUILD_PARAMS) == {"flat", "ivf", "ivfpq", "hnsw"}
