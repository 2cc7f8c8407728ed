"""Re-ranking and query expansion of retrieved candidates against the whole-gallery versions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")

from index_testlib import MANIFEST, clustered_features, entries_for  # noqa: E402

from reidkit.evaluation import alpha_query_expansion, re_ranking  # noqa: E402
from reidkit.index import GalleryIndex, GalleryIndexError, expand_queries, rerank_result  # noqa: E402

DIM = 24


@pytest.fixture
def index(tmp_path):
    index = GalleryIndex.create(tmp_path / "idx", DIM, MANIFEST)
    index.add(clustered_features(300, DIM, seed=3), entries_for(300))
    return index


def test_rerank_of_the_whole_gallery_equals_full_re_ranking(index):
    queries = clustered_features(12, DIM, seed=4)
    result = index.search(queries, topk=len(index))
    reranked = rerank_result(index, queries, result, topk=10)
    full = re_ranking(queries, index.features(np.arange(300))).numpy()  # (Q, G), smaller is closer
    np.testing.assert_allclose(-reranked.scores, np.sort(full, axis=1)[:, :10], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, reranked.ids, 1), -reranked.scores, atol=1e-5)
    assert [e.id for e in reranked.metadata[0]] == reranked.ids[0].tolist()


def test_rerank_of_a_candidate_subset_keeps_only_candidates(index):
    queries = clustered_features(5, DIM, seed=5)
    result = index.search(queries, topk=40, camids=[0, 1])
    reranked = rerank_result(index, queries, result, topk=8)
    assert reranked.ids.shape == (5, 8)
    assert all(set(r) <= set(c) for r, c in zip(reranked.ids.tolist(), result.ids.tolist()))
    assert np.all(np.diff(reranked.scores, axis=1) <= 0)
    with pytest.raises(GalleryIndexError, match="3 queries given for a search result of 5"):
        rerank_result(index, queries[:3], result)


def test_query_expansion_on_exact_candidates_equals_full_expansion(index):
    queries = clustered_features(7, DIM, seed=6)
    result = index.search(queries, topk=10)
    expanded = expand_queries(index, queries, result, k=5, alpha=3.0)
    reference = alpha_query_expansion(queries, index.features(np.arange(300)), k=5, alpha=3.0).numpy()
    np.testing.assert_allclose(expanded, reference, atol=1e-5)
    again = index.search(expanded, topk=3)
    assert again.ids.shape == (7, 3)
    with pytest.raises(GalleryIndexError, match="k=11 but 10 candidates"):
        expand_queries(index, queries, result, k=11)
