"""Search results and the pieces of a search: camera filters, exact refinement, padding."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from .errors import GalleryIndexError
from .metadata import Entry

QUERY_BLOCK = 1024  # queries per faiss call: bounds the refinement's (block, k', D) gather


@dataclass(frozen=True)
class SearchResult:
    """Top-k of each query.

    Attributes:
        ids: ``(Q, k)`` int64 entry ids, best first; ``-1`` where fewer than k entries qualify.
        scores: ``(Q, k)`` float32 inner products of the (L2-normalised, see the manifest) query
            and gallery embeddings: cosine similarity, larger is closer; ``-inf`` where ``ids`` is -1.
        metadata: ``metadata[q]`` lists the :class:`Entry` of each valid id of query ``q``, in rank
            order (shorter than k where ``ids`` is -1).
    """

    ids: np.ndarray
    scores: np.ndarray
    metadata: list[list[Entry]]

    def rescored(self, scores: np.ndarray, topk: int | None = None) -> SearchResult:
        """The same candidates re-sorted by new scores, e.g. after re-ranking the retrieved candidates.

        Args:
            scores: ``(Q, k)`` new scores of ``self.ids``, larger is closer (negate a distance,
                e.g. a k-reciprocal re-ranking distance, which is smaller-is-closer). Entries
                where ``ids`` is -1 are ignored.
            topk: keep the best ``topk`` per query (default: all k).

        Returns:
            A new :class:`SearchResult` whose ``scores`` are the new ones (float32).

        Raises:
            GalleryIndexError: ``scores`` is not of shape ``(Q, k)`` or has NaN at a valid id.
        """
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != self.ids.shape:
            raise GalleryIndexError(f"rescored: scores have shape {scores.shape}; expected {self.ids.shape}")
        valid = self.ids >= 0
        if np.isnan(scores[valid]).any():
            raise GalleryIndexError("rescored: scores have NaN at retrieved candidates")
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : topk or scores.shape[1]]
        ids = np.take_along_axis(self.ids, order, axis=1)
        new_scores = np.take_along_axis(scores, order, axis=1)
        by_id = [{e.id: e for e in row} for row in self.metadata]
        metadata = [[lookup[i] for i in row if i >= 0] for lookup, row in zip(by_id, ids.tolist())]
        return SearchResult(ids, new_scores, metadata)


def camera_groups(
    num_queries: int,
    live_camids: np.ndarray,
    camids: Collection[int] | None,
    exclude_camids: Collection[int] | None,
    query_camids: np.ndarray | None,
) -> list[tuple[np.ndarray, np.ndarray | None, tuple]]:
    """Split the queries into groups that share one gallery mask.

    Args:
        num_queries: Q.
        live_camids: ``(N,)`` int64 camid of each live entry (``NO_CAMID`` for unknown).
        camids: keep only gallery entries of these cameras (unknown cameras are dropped).
        exclude_camids: drop gallery entries of these cameras, for every query.
        query_camids: ``(Q,)`` int64: drop, for each query, the gallery entries of its own camera
            (the usual cross-camera ReID rule).

    Returns:
        ``[(query rows, mask over live entries or None for all, cache key), ...]``.
    """
    mask = None
    if camids is not None:
        mask = np.isin(live_camids, np.asarray(list(camids), dtype=np.int64))
    if exclude_camids is not None:
        keep = ~np.isin(live_camids, np.asarray(list(exclude_camids), dtype=np.int64))
        mask = keep if mask is None else mask & keep
    key = (_key(camids), _key(exclude_camids))
    if query_camids is None:
        return [(np.arange(num_queries), mask, key)]
    groups = []
    for cam in np.unique(query_camids):
        own = live_camids != cam
        groups.append((np.flatnonzero(query_camids == cam), own if mask is None else mask & own, (*key, int(cam))))
    return groups


def _key(values: Collection[int] | None) -> tuple | None:
    return None if values is None else tuple(sorted({int(v) for v in values}))


def refine_exact(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, topk: int):
    """Re-score candidates exactly and keep the best ``topk``.

    faiss's ``IndexRefineFlat`` does the same but keeps a second full-precision copy of every
    vector in memory; here the exact vectors are read from the memory-mapped vectors file.

    Args:
        queries: ``(Q, D)`` float32.
        candidates: ``(Q, k')`` int64 ids (rows of ``vectors``), -1 for none.
        vectors: ``(rows, D)`` float32, row i = id i.
        topk: k.

    Returns:
        ``(scores (Q, k) float32 inner products, larger is closer; ids (Q, k) int64)``.
    """
    valid = candidates >= 0
    gathered = vectors[np.where(valid, candidates, 0).ravel()].reshape(*candidates.shape, -1)  # (Q, k', D)
    exact = np.einsum("qd,qkd->qk", queries, gathered).astype(np.float32)
    exact[~valid] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :topk]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(candidates, order, axis=1)


def pad(scores: np.ndarray, ids: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` padded/cut to ``topk`` columns, ``-inf`` / ``-1`` for missing results."""
    out_ids = np.full((len(ids), topk), -1, dtype=np.int64)
    out_scores = np.full((len(ids), topk), -np.inf, dtype=np.float32)
    width = min(topk, ids.shape[1])
    out_ids[:, :width] = ids[:, :width]
    out_scores[:, :width] = scores[:, :width]
    out_scores[out_ids < 0] = -np.inf
    return out_scores, out_ids
