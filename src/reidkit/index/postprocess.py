"""Re-ranking and query expansion on the candidates an index retrieved.

Both use :mod:`reidkit.evaluation` (k-reciprocal re-ranking, Zhong et al., CVPR 2017; alpha query
expansion, Radenovic et al., TPAMI 2018) on the stored features of the retrieved entries, so a
gallery of any size is post-processed at the cost of its top-n candidates only.
"""

from __future__ import annotations

import numpy as np

from .errors import GalleryIndexError
from .search import SearchResult


def rerank_result(
    index,
    queries,
    result: SearchResult,
    topk: int | None = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> SearchResult:
    """k-reciprocal re-ranking of the candidates in ``result``.

    The candidate pool is the union of every query's retrieved ids; their stored features and the
    queries go to :func:`reidkit.evaluation.re_ranking_candidates` (whose docstring says how this
    approximates re-ranking over the whole gallery: retrieve n well above ``k1``, e.g. 100-200).
    With every gallery entry retrieved it equals :func:`reidkit.evaluation.re_ranking`.

    Args:
        index: the :class:`~reidkit.index.GalleryIndex` that produced ``result``.
        queries: ``(Q, D)`` the query embeddings given to the search.
        result: its :class:`SearchResult` (``(Q, n)`` candidates).
        topk: keep the best ``topk`` after re-ranking (default: all n).
        k1, k2, lambda_value: re-ranking parameters, as in :func:`reidkit.evaluation.re_ranking`.

    Returns:
        A :class:`SearchResult` re-sorted by re-ranked distance; its ``scores`` are the negated
        re-ranked distances (larger is closer), ``-inf`` where ``ids`` is -1.

    Raises:
        GalleryIndexError: ``queries`` do not match ``result`` or the index.
    """
    from reidkit.evaluation import re_ranking_candidates

    q, pool, positions, valid = _pool(index, queries, result)
    if len(pool) == 0:
        return result
    dist = re_ranking_candidates(q, index.features(pool), positions, k1, k2, lambda_value).cpu().numpy()
    return result.rescored(np.where(valid, -dist, -np.inf), topk=topk)


def expand_queries(index, queries, result: SearchResult, k: int = 10, alpha: float = 3.0) -> np.ndarray:
    """Alpha query expansion of each query with its top-k retrieved candidates.

    Each query becomes ``normalize(q + sum_j max(q . g_j, 0) ** alpha * g_j)`` over its ``k``
    best candidates in ``result``, through :func:`reidkit.evaluation.alpha_query_expansion`
    applied to that query's candidates; search again with the result. With exact retrieval
    (``flat``) it equals alpha query expansion over the whole gallery.

    Args:
        index: the :class:`~reidkit.index.GalleryIndex` that produced ``result``.
        queries: ``(Q, D)`` the query embeddings given to the search.
        result: its :class:`SearchResult`, with at least ``k`` columns.
        k: candidates added to each query.
        alpha: exponent of the similarity weights.

    Returns:
        ``(Q, D)`` float32 L2-normalised expanded queries.

    Raises:
        GalleryIndexError: ``queries`` do not match ``result`` or the index, or ``k`` exceeds
            the retrieved candidates.
    """
    from reidkit.evaluation import alpha_query_expansion

    q, _, _, _ = _pool(index, queries, result)
    if not 0 <= k <= result.ids.shape[1]:
        raise GalleryIndexError(f"expand_queries: k={k} but {result.ids.shape[1]} candidates were retrieved per query")
    out = np.empty_like(q)
    for i, row in enumerate(result.ids[:, :k]):
        row = row[row >= 0]
        gallery = index.features(row) if len(row) else np.zeros((1, q.shape[1]), np.float32)
        out[i] = alpha_query_expansion(q[i : i + 1], gallery, len(row), alpha).cpu().numpy()[0]
    return out


def _pool(index, queries, result: SearchResult):
    """Normalised queries, the sorted union of candidate ids, each candidate's row in it, validity."""
    q = index._rows(queries, "queries")
    if len(q) != len(result.ids):
        raise GalleryIndexError(f"{len(q)} queries given for a search result of {len(result.ids)} queries")
    valid = result.ids >= 0
    pool = np.unique(result.ids[valid])
    positions = np.searchsorted(pool, np.where(valid, result.ids, pool[0] if len(pool) else 0))
    return q, pool, positions, valid
