"""Ranking metrics for ReID: CMC, mAP and mINP under the Market-1501 protocol.

Protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015): for each
query, gallery items with the same pid *and* the same camid as the query are removed from its
ranking, and so are items with pid -1 (junk); pid 0 (distractors) stay. A correct match is a
remaining gallery item with the query's pid. Ranks below are 1-based positions among the
remaining items, ordered by distance (smaller is closer) with ties broken by gallery index.

* CMC rank-k: fraction of valid queries whose first correct match has rank <= k.
* AP (non-interpolated): mean over the correct matches of precision at that match's rank.
* INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI
  2021): number of correct matches / rank of the last correct match.

mAP and mINP average over the *valid* queries, those with at least one correct match; the others
are skipped and counted.

Queries are processed in blocks of rows: each block is sorted once by (distance, gallery index),
so ties are broken deterministically as a stable sort would, and all metrics come from the
positions of the correct matches, with no per-query Python loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np
import torch
from torch import Tensor

from reidkit.evaluation.distance import check_features, compute_distance_matrix

ArrayLike = Union[np.ndarray, Tensor]

JUNK_PID = -1
_DROPPED, _KEPT, _HIT = 0, 1, 2  # status of a gallery item for a query
MEMORY_BUDGET_BYTES = 256 * 2**20
"""Extra memory the automatic ``block_size`` aims for (bytes), excluding the caller's distmat."""
_BYTES_PER_ENTRY = 32  # int64 sort keys + their int32 source + bool / uint8 masks, per entry
_REPORTED_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True, eq=False)
class RankResult:
    """Retrieval metrics of one evaluation.

    Attributes:
        cmc: ``(max_rank,)`` float64 CMC curve, ``cmc[k - 1]`` = fraction (in [0, 1]) of valid
            queries whose first correct match has rank <= k. Read-only.
        mAP: mean average precision over valid queries, in [0, 1].
        mINP: mean inverse negative penalty over valid queries, in [0, 1].
        num_valid_queries: queries with at least one correct match (the averages' denominator).
        num_skipped_queries: queries without any correct match, left out of every average.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based), i.e. ``cmc[k - 1]``.

        Raises:
            ValueError: ``k`` is outside ``[1, max_rank]``.
        """
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"k must be in [1, {len(self.cmc)}] (max_rank), got {k}")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float]:
        """``{"rank1", "rank5", "rank10", "rank20" (those <= max_rank), "mAP", "mINP"}``."""
        metrics = {f"rank{k}": self.rank(k) for k in _REPORTED_RANKS if k <= len(self.cmc)}
        metrics.update(mAP=self.mAP, mINP=self.mINP)
        return metrics


class _Labels(NamedTuple):
    """Validated identity and camera labels, each a 1-D int64 array."""

    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


class _QueryScores(NamedTuple):
    """Per-query results of a block; ``first_rank`` is 0 for a query without correct match."""

    first_rank: np.ndarray  # (b,) int64
    ap: np.ndarray  # (b,) float64
    inp: np.ndarray  # (b,) float64


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    block_size: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a query-gallery distance matrix (Market-1501 protocol).

    See the module docstring for the protocol (Zheng et al. 2015) and mINP (Ye et al. 2021).
    Ties in ``distmat`` are broken by gallery index (lower index ranks first), deterministically.

    Memory: ``distmat`` is read one block of ``block_size`` query rows at a time (a CUDA tensor
    is copied to the CPU block by block; float16/bfloat16 blocks are upcast to float32, which is
    exact). Extra memory is about ``32 * block_size * num_gallery`` bytes; the default
    ``block_size`` keeps it near :data:`MEMORY_BUDGET_BYTES` (256 MiB), e.g. ~100 rows for the
    82,161-image MSMT17 gallery, so only the caller's matrix scales with ``num_query``.

    Args:
        distmat: ``(num_query, num_gallery)`` numpy array or torch tensor of distances, smaller
            is closer; float or integer, no NaN.
        q_pids: ``(num_query,)`` integer identity labels of the queries.
        g_pids: ``(num_gallery,)`` integer identity labels of the gallery; -1 is junk (always
            ignored), 0 a distractor (ranked like any other wrong match).
        q_camids: ``(num_query,)`` integer camera ids of the queries.
        g_camids: ``(num_gallery,)`` integer camera ids of the gallery.
        max_rank: length of the CMC curve. If ``num_gallery < max_rank`` the curve is only
            informative up to ``num_gallery``; it is padded with its last value and a warning is
            issued.
        block_size: query rows per block; ``None`` chooses it from the memory budget.

    Returns:
        A :class:`RankResult`.

    Raises:
        TypeError: ``distmat`` is not a real numpy array / tensor, or labels are not integers.
        ValueError: shapes disagree, ``distmat`` contains NaN, ``max_rank`` or ``block_size``
            is < 1, or no query has a correct match. A warning is issued when some (not all)
            queries are skipped.
    """
    num_query, num_gallery = _check_distmat(distmat)
    labels = _check_labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery)
    block_size = _resolve_block_size(block_size, num_gallery)
    _check_max_rank(max_rank, num_gallery)
    blocks = ((rows, _cpu_block(distmat[rows])) for rows in _row_blocks(num_query, block_size))
    return _evaluate_blocks(blocks, labels, max_rank)


def evaluate_rank_from_features(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: str = "euclidean",
    max_rank: int = 50,
    block_size: int | None = None,
) -> RankResult:
    """:func:`evaluate_rank` on distances computed from embeddings, one block of queries at a time.

    Same result as ``evaluate_rank(compute_distance_matrix(qf, gf, metric), ...)`` but the full
    ``(num_query, num_gallery)`` matrix is never materialised: each block of ``block_size`` query
    rows gets its ``(block_size, num_gallery)`` float32 distances (on the features' device, then
    moved to the CPU), is ranked, and is freed. Extra memory is about
    ``36 * block_size * num_gallery`` bytes plus the features; the default ``block_size`` keeps it
    near :data:`MEMORY_BUDGET_BYTES`. No gradients are recorded.

    Args:
        qf: ``(num_query, D)`` query embeddings (torch tensor or numpy array).
        gf: ``(num_gallery, D)`` gallery embeddings (torch tensor or numpy array).
        q_pids, g_pids, q_camids, g_camids, max_rank, block_size: as in :func:`evaluate_rank`.
        metric: ``"euclidean"`` (not squared), ``"sqeuclidean"`` or ``"cosine"`` (1 - cosine
            similarity); see :func:`~reidkit.evaluation.distance.compute_distance_matrix`.

    Returns:
        A :class:`RankResult`.

    Raises:
        TypeError, ValueError: as :func:`evaluate_rank` and
            :func:`~reidkit.evaluation.distance.compute_distance_matrix`.
    """
    qf, gf = _as_tensor(qf), _as_tensor(gf)
    check_features(qf, gf, metric)
    num_query, num_gallery = qf.shape[0], gf.shape[0]
    _check_not_empty(num_query, num_gallery)
    labels = _check_labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery)
    block_size = _resolve_block_size(block_size, num_gallery)
    _check_max_rank(max_rank, num_gallery)
    with torch.no_grad():
        blocks = (
            (rows, compute_distance_matrix(qf[rows], gf, metric).cpu())
            for rows in _row_blocks(num_query, block_size)
        )
        return _evaluate_blocks(blocks, labels, max_rank)


def auto_block_size(num_gallery: int, memory_budget: int = MEMORY_BUDGET_BYTES) -> int:
    """Query rows per block so that the ranking's extra memory stays within ``memory_budget``.

    Args:
        num_gallery: gallery size G.
        memory_budget: bytes; about 32 bytes are needed per (query, gallery) entry of a block.

    Returns:
        ``max(1, memory_budget // (32 * num_gallery))``.
    """
    return max(1, memory_budget // (_BYTES_PER_ENTRY * max(num_gallery, 1)))


# --- ranking -------------------------------------------------------------------------------------


def _evaluate_blocks(
    blocks: Iterator[tuple[slice, Tensor]], labels: _Labels, max_rank: int
) -> RankResult:
    """Rank every ``(rows, (b, num_gallery) distances)`` block and summarise all queries."""
    scores = [_score_block(dist, labels, rows) for rows, dist in blocks]
    first_rank, ap, inp = (np.concatenate(column) for column in zip(*scores))
    return _summarise(_QueryScores(first_rank, ap, inp), max_rank)


def _score_block(dist: Tensor, labels: _Labels, rows: slice) -> _QueryScores:
    """Per-query first-hit rank, AP and INP for the queries ``rows``; ``dist: (b, G)``."""
    if dist.is_floating_point() and torch.isnan(dist).any():
        raise ValueError(f"distmat contains NaN (query rows {rows.start}..{rows.stop - 1})")
    hit_rows, hit_ranks = _hit_ranks(dist, labels, rows)
    return _query_scores(hit_rows, hit_ranks, num_rows=dist.shape[0])


def _hit_ranks(dist: Tensor, labels: _Labels, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Block row and 1-based rank among kept gallery items of every correct match.

    ``dist: (b, G)``. Returns two ``(num_hits,)`` int64 arrays, grouped by row and, within a row,
    in increasing rank.
    """
    status = np.take_along_axis(_gallery_status(labels, rows), _closest_first(dist), axis=1)
    num_gallery = status.shape[1]
    hits = np.flatnonzero(status == _HIT)  # row-major flat positions: by row, then by position
    dropped = np.flatnonzero(status == _DROPPED)
    hit_rows, hit_positions = np.divmod(hits, num_gallery)
    row_starts = hit_rows * num_gallery
    dropped_above = np.searchsorted(dropped, hits) - np.searchsorted(dropped, row_starts)
    return hit_rows, hit_positions + 1 - dropped_above


def _gallery_status(labels: _Labels, rows: slice) -> np.ndarray:
    """``(b, G)`` uint8 in gallery order: _DROPPED (same pid and camid, or junk), _KEPT or _HIT."""
    same_pid = labels.q_pids[rows, None] == labels.g_pids  # (b, G) bool
    same_cam = labels.q_camids[rows, None] == labels.g_camids  # (b, G) bool
    keep = ~(same_pid & same_cam) & (labels.g_pids != JUNK_PID)
    return keep.view(np.uint8) + (same_pid & keep).view(np.uint8)


def _closest_first(dist: Tensor) -> np.ndarray:
    """``(b, G)`` int64 gallery indices of each row of ``dist: (b, G)`` by (distance, index)."""
    if dist.dtype == torch.float32 and dist.shape[1] < 2**32:
        return _sort_packed_keys(dist.numpy())
    return torch.sort(dist, dim=1, stable=True).indices.numpy()


def _sort_packed_keys(dist: np.ndarray) -> np.ndarray:
    """Stable argsort of float32 rows, done as a plain sort of distinct int64 keys (~2x faster).

    Key = (the float's bits mapped to an int32 of the same order) << 32 | gallery index. The
    mapping flips the magnitude bits of negative floats, after turning -0.0 into +0.0 (they
    compare equal). All keys differ, so any sort yields the (distance, index) order.
    """
    bits = (dist + np.float32(0)).view(np.int32)  # (b, G) new array; -0.0 + 0 = +0.0
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # now ordered like the floats
    keys = bits.astype(np.int64) << 32  # (b, G)
    keys |= np.arange(dist.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    keys &= 0xFFFFFFFF  # back to gallery indices
    return keys


def _query_scores(hit_rows: np.ndarray, hit_ranks: np.ndarray, num_rows: int) -> _QueryScores:
    """First-hit rank, AP and INP per row from the ranks of the hits, grouped by row."""
    num_hits = np.bincount(hit_rows, minlength=num_rows)  # (b,)
    start = np.cumsum(num_hits) - num_hits  # (b,) index of each row's first hit
    hit_number = np.arange(1, len(hit_rows) + 1) - start[hit_rows]  # 1-based within its row
    precision = hit_number / hit_ranks  # (num_hits,) precision at each correct match
    ap = np.bincount(hit_rows, weights=precision, minlength=num_rows) / np.maximum(num_hits, 1)
    has_hit = num_hits > 0
    first_rank = np.zeros(num_rows, dtype=np.int64)
    first_rank[has_hit] = hit_ranks[start[has_hit]]
    inp = np.zeros(num_rows)
    inp[has_hit] = num_hits[has_hit] / hit_ranks[start[has_hit] + num_hits[has_hit] - 1]
    return _QueryScores(first_rank, ap, inp)


def _summarise(scores: _QueryScores, max_rank: int) -> RankResult:
    """Average the per-query scores over valid queries; CMC from the first-hit ranks."""
    valid = scores.first_rank > 0
    num_valid, num_skipped = int(valid.sum()), int((~valid).sum())
    if num_valid == 0:
        raise ValueError(
            f"no query has a correct match in the gallery (all {num_skipped} skipped): check "
            "that query and gallery share identities seen from other cameras"
        )
    if num_skipped:
        warnings.warn(f"{num_skipped} queries have no correct match in the gallery; skipped")
    first_rank = np.minimum(scores.first_rank[valid], max_rank + 1)  # > max_rank -> one bucket
    cmc = np.cumsum(np.bincount(first_rank, minlength=max_rank + 2)[1 : max_rank + 1]) / num_valid
    cmc.setflags(write=False)
    return RankResult(
        cmc=cmc,
        mAP=float(scores.ap[valid].mean()),
        mINP=float(scores.inp[valid].mean()),
        num_valid_queries=num_valid,
        num_skipped_queries=num_skipped,
    )


# --- input handling ------------------------------------------------------------------------------


def _row_blocks(num_rows: int, block_size: int) -> Iterator[slice]:
    for start in range(0, num_rows, block_size):
        yield slice(start, min(start + block_size, num_rows))


def _cpu_block(block: ArrayLike) -> Tensor:
    """A CPU tensor view (or copy when needed) of a ``(b, G)`` block of ``distmat``."""
    if isinstance(block, np.ndarray):
        block = torch.from_numpy(np.require(block, requirements=["C", "W"]))
    block = block.detach().cpu()
    return block.float() if block.dtype in (torch.float16, torch.bfloat16) else block


def _as_tensor(features: ArrayLike) -> ArrayLike:
    return torch.from_numpy(features) if isinstance(features, np.ndarray) else features


def _check_distmat(distmat: ArrayLike) -> tuple[int, int]:
    """Shape ``(num_query, num_gallery)`` of a valid distance matrix; raise otherwise."""
    if isinstance(distmat, np.ndarray):
        is_real = distmat.dtype != np.bool_ and np.issubdtype(distmat.dtype, np.number)
        is_real = is_real and not np.iscomplexobj(distmat)
    elif isinstance(distmat, Tensor):
        is_real = distmat.dtype != torch.bool and not distmat.is_complex()
    else:
        raise TypeError(f"distmat must be a numpy array or torch tensor, got {type(distmat)}")
    if not is_real:
        raise TypeError(f"distmat must hold real float or integer distances, got {distmat.dtype}")
    if distmat.ndim != 2:
        raise ValueError(
            f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(distmat.shape)}"
        )
    _check_not_empty(distmat.shape[0], distmat.shape[1])
    return distmat.shape[0], distmat.shape[1]


def _check_not_empty(num_query: int, num_gallery: int) -> None:
    if num_query == 0 or num_gallery == 0:
        raise ValueError(
            f"need at least one query and one gallery item, got num_query={num_query}, "
            f"num_gallery={num_gallery}"
        )


def _check_labels(
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    num_query: int,
    num_gallery: int,
) -> _Labels:
    return _Labels(
        q_pids=_int_vector(q_pids, "q_pids", num_query, "num_query"),
        g_pids=_int_vector(g_pids, "g_pids", num_gallery, "num_gallery"),
        q_camids=_int_vector(q_camids, "q_camids", num_query, "num_query"),
        g_camids=_int_vector(g_camids, "g_camids", num_gallery, "num_gallery"),
    )


def _int_vector(values: ArrayLike, name: str, length: int, length_name: str) -> np.ndarray:
    """``values`` as a ``(length,)`` int64 array; raise if it is anything else."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.shape != (length,):
        expected = f"({length_name},) = ({length},)"
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    return array.astype(np.int64, copy=False)


def _resolve_block_size(block_size: int | None, num_gallery: int) -> int:
    if block_size is None:
        return auto_block_size(num_gallery)
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    return int(block_size)


def _check_max_rank(max_rank: int, num_gallery: int) -> None:
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if num_gallery < max_rank:
        warnings.warn(
            f"num_gallery ({num_gallery}) < max_rank ({max_rank}): the CMC curve beyond rank "
            f"{num_gallery} repeats its last value"
        )
