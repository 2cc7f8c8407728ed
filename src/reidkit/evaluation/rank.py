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

How (no full argsort of a row, no per-query Python loop): all three metrics only need the rank
of each correct match, and that rank is 1 + the number of kept items whose (distance, gallery
index) key is smaller. Queries go in blocks of rows. A block's distances are sorted by value
(numpy's SIMD sort of plain values, ~4x faster than the argsort used before); for each gallery
item with the query's pid (its correct matches and the same-camera items dropped from its
ranking, a few per row) a binary search in the sorted row counts the items with a smaller
distance. An item whose distance occurs more than once in its row adds the number of equal
items at a lower gallery index, counted by comparing the row with that distance, or, in a row
with more than ``_MAX_TIED_VALUES_PER_ROW`` distinct tied distances, read from a stable sort of
that row (packed (distance, index) keys, as before). The rank of a correct match is then its
position in the row, plus one, minus the dropped items before it. Blocks are ranked on
``torch.get_num_threads()`` threads (numpy's sort releases the GIL).
"""

from __future__ import annotations

import queue
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar, Union

import numpy as np
import torch
from torch import Tensor

from threadpoolctl import threadpool_limits

from reidkit.evaluation.distance import check_features, gallery_ranking_keys, numpy_gemm_default

ArrayLike = Union[np.ndarray, Tensor]
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

JUNK_PID = -1
MEMORY_BUDGET_BYTES = 256 * 2**20
"""Extra memory the automatic ``block_size`` aims for (bytes), excluding the caller's distmat."""
_BYTES_PER_ENTRY = 16  # per entry of a block in flight: its sorted copy and the temporaries
_MAX_TIED_VALUES_PER_ROW = 4  # a row with more distinct tied distances: stable sort
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


class _SamePid(NamedTuple):
    """Where each query's same-pid gallery items are, among the non-junk gallery columns."""

    kept_cols: np.ndarray | None  # (G',) int64 gallery index of each non-junk column; None: no junk
    junk_cols: np.ndarray  # (G - G',) int64 gallery indices of the junk items
    by_pid: np.ndarray  # (G',) int64 non-junk columns grouped by pid, ascending within a pid
    g_camids: np.ndarray  # (G',) int64 camera of each non-junk column
    q_start: np.ndarray  # (Q,) int64 where the query's pid group starts in by_pid
    q_count: np.ndarray  # (Q,) int64 size of that group, 0 when the pid is not in the gallery
    q_camids: np.ndarray  # (Q,) int64


class _Items(NamedTuple):
    """The same-pid gallery items of a block of queries: grouped by row, columns ascending."""

    row: np.ndarray  # (N,) int64 block row of the query
    col: np.ndarray  # (N,) int64 non-junk column (gallery order is kept)
    slot: np.ndarray  # (N,) int64 index of the item within its row
    start: np.ndarray  # (b,) int64 index of each row's first item
    dropped: np.ndarray  # (N,) bool: same camera as the query, not ranked


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

    See the module docstring for the protocol (Zheng et al. 2015), mINP (Ye et al. 2021) and
    how ranks are found without sorting indices. Ties in ``distmat`` are broken by gallery
    index (lower index ranks first), deterministically; -0.0 and +0.0 are equal.

    Speed and memory: ``distmat`` is read one block of ``block_size`` query rows at a time (a
    CUDA tensor is copied to the CPU block by block) and ``torch.get_num_threads()`` blocks are
    ranked at once, one per thread. Each block in flight needs about ``16 * block_size *
    num_gallery`` bytes (a sorted copy: float16/bfloat16 and float64 holding only float32 values
    are sorted as float32, integers fitting int32 as int32, all exact); the default
    ``block_size`` keeps the total near :data:`MEMORY_BUDGET_BYTES` (256 MiB), so only the
    caller's matrix scales with ``num_query``. float32 input is fastest; genuine float64 and
    int64 sort ~4x slower, and rows where many same-pid items tie with others take a stable
    sort of the row.

    Args:
        distmat: ``(num_query, num_gallery)`` numpy array (a memory-mapped one is fine) or torch
            tensor of distances, smaller is closer; float or integer, no NaN.
        q_pids: ``(num_query,)`` integer identity labels of the queries.
        g_pids: ``(num_gallery,)`` integer identity labels of the gallery; -1 is junk (always
            ignored), 0 a distractor (ranked like any other wrong match).
        q_camids: ``(num_query,)`` integer camera ids of the queries.
        g_camids: ``(num_gallery,)`` integer camera ids of the gallery.
        max_rank: length of the CMC curve. If ``num_gallery < max_rank`` the curve is only
            informative up to ``num_gallery``; it is padded with its last value and a warning is
            issued.
        block_size: query rows per block; ``None`` chooses it with :func:`auto_block_size`.

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
    workers = _num_workers()
    block_size = _resolve_block_size(block_size, num_gallery, workers)
    _check_max_rank(max_rank, num_gallery)
    blocks = ((rows, _cpu_block(distmat[rows])) for rows in _row_blocks(num_query, block_size))
    return _evaluate_blocks(blocks, labels, max_rank, workers)


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

    The result of ``evaluate_rank(compute_distance_matrix(qf, gf, metric), ...)`` but the full
    ``(num_query, num_gallery)`` matrix is never materialised: blocks of ``block_size`` query
    rows get their float32 ranking keys and are ranked, ``workers = torch.get_num_threads()``
    blocks at a time. On CPUs where the product is numpy's BLAS (non-Intel x86, see
    :func:`~reidkit.evaluation.distance.numpy_gemm_default`, measured 1.5x faster than torch's
    MKL there) each thread computes and ranks its own blocks with a single-threaded product
    (BLAS limited to one thread during the call, through ``threadpoolctl``); otherwise (CUDA
    features, torch's BLAS) ``workers`` blocks are computed by one product on the features'
    device into a reused CPU buffer and then ranked together, product and ranking taking turns.
    The keys (:func:`~reidkit.evaluation.distance.gallery_ranking_keys`: ``||g||^2 / 2 - q.g``,
    or ``-cos``) sort each row as its distances do, with one pass over the product instead of
    five. Orders equal the full matrix's up to float32 rounding: two gallery items whose
    distances to a query are within ~1e-7 relative of each other may swap places or tie
    differently; exact-arithmetic inputs rank identically.
    Extra memory is about ``16 * block_size * num_gallery`` bytes per block in flight
    (``torch.get_num_threads()`` of them) plus the features; the default ``block_size`` keeps it
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
    workers = _num_workers()
    block_size = _resolve_block_size(block_size, num_gallery, workers)
    _check_max_rank(max_rank, num_gallery)
    same_pid = _same_pid_index(labels)
    with torch.no_grad(), ThreadPoolExecutor(workers) as pool:
        keys = gallery_ranking_keys(gf, metric)  # gallery norms once, not per block
        if gf.device.type == "cpu" and numpy_gemm_default():
            scores = _rank_products_per_thread(keys, qf, num_gallery, same_pid, block_size, workers, pool)
        else:
            scores = _rank_products_in_turns(keys, qf, num_gallery, same_pid, block_size, workers, pool)
    first_rank, ap, inp = (np.concatenate(column) for column in zip(*scores))
    return _summarise(_QueryScores(first_rank, ap, inp), max_rank)


def _rank_products_per_thread(
    keys: Callable[..., Tensor],
    qf: Tensor,
    num_gallery: int,
    same_pid: _SamePid,
    block_size: int,
    workers: int,
    pool: ThreadPoolExecutor,
) -> list[_QueryScores]:
    """Each of ``workers`` threads computes the keys of one block of ``block_size`` query rows
    (single-threaded BLAS, into a key buffer of its own) and ranks it, block after block.

    Why not one multi-threaded product at a time: after each product OpenBLAS's idle threads
    spin for a while, taking the cores from the threads that rank; one product per thread leaves
    nothing spinning (measured ~10% faster at Market-1501 size, 2-core AMD EPYC).
    ``threadpoolctl`` limits the BLAS to one thread for the duration of the call (process-wide).
    """
    num_query = qf.shape[0]
    buffers: queue.SimpleQueue[Tensor] = queue.SimpleQueue()  # one (block_size, G) per thread
    for _ in range(min(workers, -(-num_query // block_size))):
        buffers.put(torch.empty(min(block_size, num_query), num_gallery))

    def rank_block(rows: slice) -> _QueryScores:
        buffer = buffers.get()
        try:
            block = buffer[: rows.stop - rows.start]  # leading rows: contiguous
            keys(qf[rows], out=block)
            return _score_block(rows, block.numpy(), same_pid)
        finally:
            buffers.put(buffer)

    with threadpool_limits(limits=1, user_api="blas"):
        return list(pool.map(rank_block, _row_blocks(num_query, block_size)))


def _rank_products_in_turns(
    keys: Callable[..., Tensor],
    qf: Tensor,
    num_gallery: int,
    same_pid: _SamePid,
    block_size: int,
    workers: int,
    pool: ThreadPoolExecutor,
) -> list[_QueryScores]:
    """One product of ``block_size * workers`` query rows at a time (on the features' device,
    with all its threads, into one reused CPU buffer), then its ``workers`` parts ranked at once:
    product and ranking take turns rather than overlap (on 2 cores they otherwise compete for
    the cores and the memory bandwidth; measured slower)."""
    num_query = qf.shape[0]
    step = block_size * workers
    buffer = torch.empty(min(step, num_query), num_gallery)  # reused by every product
    scores: list[_QueryScores] = []
    for rows in _row_blocks(num_query, step):
        block = buffer[: rows.stop - rows.start]  # leading rows: contiguous
        if qf.device.type == "cpu":
            keys(qf[rows], out=block)
        else:  # computed on the device, copied into the CPU buffer
            block.copy_(keys(qf[rows]))
        array = block.numpy()
        parts = [
            pool.submit(
                _score_block, part, array[part.start - rows.start : part.stop - rows.start], same_pid
            )
            for part in _row_blocks_from(rows, block_size)
        ]
        scores.extend(part.result() for part in parts)  # ranked before the buffer is reused
    return scores


def auto_block_size(
    num_gallery: int, memory_budget: int = MEMORY_BUDGET_BYTES, num_workers: int | None = None
) -> int:
    """Query rows per block so that the ranking's extra memory stays within ``memory_budget``.

    Args:
        num_gallery: gallery size G.
        memory_budget: bytes for all blocks in flight together; each needs about 16 bytes per
            (query, gallery) entry.
        num_workers: blocks ranked at once; ``None``: ``torch.get_num_threads()``, as
            :func:`evaluate_rank` uses.

    Returns:
        ``max(1, memory_budget // (16 * num_workers * num_gallery))``.
    """
    num_workers = num_workers or _num_workers()
    return max(1, memory_budget // (_BYTES_PER_ENTRY * num_workers * max(num_gallery, 1)))


# --- ranking -------------------------------------------------------------------------------------


def _evaluate_blocks(
    blocks: Iterator[tuple[slice, np.ndarray]], labels: _Labels, max_rank: int, workers: int
) -> RankResult:
    """Rank every ``(rows, (b, num_gallery) distances)`` block and summarise all queries."""
    same_pid = _same_pid_index(labels)
    score = lambda block: _score_block(*block, same_pid)  # noqa: E731
    scores = list(_map_in_order(score, blocks, workers))
    first_rank, ap, inp = (np.concatenate(column) for column in zip(*scores))
    return _summarise(_QueryScores(first_rank, ap, inp), max_rank)


def _map_in_order(
    function: Callable[[_Item], _Result], items: Iterable[_Item], workers: int
) -> Iterator[_Result]:
    """``map(function, items)`` on ``workers`` threads, with at most ``workers`` items in flight.

    An item is drawn from ``items`` only when a thread is free, so a generator making blocks of
    distances never has more than ``workers`` of them alive. Results (and errors) come in order.
    """
    if workers == 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) == workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _score_block(rows: slice, dist: np.ndarray, same_pid: _SamePid) -> _QueryScores:
    """Per-query first-hit rank, AP and INP for the queries ``rows``; ``dist: (b, G)``."""
    if len(same_pid.junk_cols) and dist.dtype.kind == "f":
        _check_no_nan(np.isnan(dist[:, same_pid.junk_cols]).any(axis=1), rows)
    kept = dist if same_pid.kept_cols is None else dist[:, same_pid.kept_cols]  # (b, G')
    items = _block_items(same_pid, rows)
    positions = _row_positions(kept, items, rows)
    hit_rows, hit_ranks = _hit_ranks(items, positions)
    return _query_scores(hit_rows, hit_ranks, num_rows=len(dist))


def _row_positions(dist: np.ndarray, items: _Items, rows: slice) -> np.ndarray:
    """``(N,)`` int64 0-based position of each item in its row's (distance, column) order.

    ``dist: (b, G')`` is left unchanged; a sorted copy gives the number of smaller distances,
    and tied items add the equal distances at lower columns.
    """
    if not len(items.row):  # no query of the block has a same-pid item: nothing to rank
        if dist.dtype.kind == "f":
            _check_no_nan(np.isnan(dist).any(axis=1), rows)
        return np.zeros(0, dtype=np.int64)
    keys = _sortable_copy(dist)  # (b, G')
    values = keys[items.row, items.col]  # (N,)
    keys.sort(axis=1)
    if keys.dtype.kind == "f":
        _check_no_nan(np.isnan(keys[:, -1]), rows)  # NaN sorts last
    positions = _count_smaller(keys, values, items.row, items.slot)  # (N,) first of equals
    after = np.minimum(positions + 1, keys.shape[1] - 1)
    tied = (positions + 1 < keys.shape[1]) & (keys[items.row, after] == values)  # (N,) has equals
    del keys
    if tied.any():
        _break_ties(dist, items, tied, positions)
    return positions


def _count_smaller(
    sorted_keys: np.ndarray, values: np.ndarray, row: np.ndarray, slot: np.ndarray
) -> np.ndarray:
    """Per needle, the entries of row ``row`` of ``sorted_keys: (b, G)`` smaller than ``values``.

    ``values``, ``row``, ``slot``: ``(N,)``, needles grouped by row, ``slot`` = index within its
    row. One batched binary search (``torch.searchsorted``) on the needles padded to
    ``(b, max needles per row)``; ``(N,)`` int64.
    """
    width = int(slot.max()) + 1 if len(slot) else 1
    needles = np.zeros((len(sorted_keys), width), dtype=sorted_keys.dtype)  # (b, width)
    needles[row, slot] = values
    smaller = torch.searchsorted(torch.from_numpy(sorted_keys), torch.from_numpy(needles))
    return smaller.numpy()[row, slot]


def _break_ties(
    dist: np.ndarray, items: _Items, tied: np.ndarray, positions: np.ndarray
) -> None:
    """Add to the ``positions`` of the ``tied`` items the equal distances at lower columns.

    ``dist: (b, G')`` unsorted. The tied items of a row are grouped by distance; each distinct
    (row, distance) pair costs one comparison of the row with its distance and a running count.
    A row with more than ``_MAX_TIED_VALUES_PER_ROW`` pairs gets a stable sort instead (cheaper
    there), which sets the positions of all its items. Updates ``positions`` in place.
    """
    tied_items = np.flatnonzero(tied)
    row, col = items.row[tied_items], items.col[tied_items]
    pair, pair_row, pair_value = _distinct_pairs(row, dist[row, col])
    by_sort = np.bincount(pair_row, minlength=len(dist)) > _MAX_TIED_VALUES_PER_ROW  # (b,)
    compared = ~by_sort[pair_row]  # (P,) pairs resolved by comparison
    renumber = np.cumsum(compared) - 1  # pair id among the compared pairs
    mine = compared[pair]
    positions[tied_items[mine]] += _count_equal_before(
        dist, pair_row[compared], pair_value[compared], renumber[pair[mine]], col[mine]
    )
    sorted_items = by_sort[items.row]
    positions[sorted_items] = _stable_positions(
        dist, np.flatnonzero(by_sort), items.row[sorted_items], items.col[sorted_items]
    )


def _distinct_pairs(row: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, ...]:
    """Group ``(T,)`` items by (row, value): their ``(T,)`` pair id and each pair's row, value."""
    order = np.lexsort((value, row))
    row_sorted, value_sorted = row[order], value[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (row_sorted[1:] != row_sorted[:-1]) | (value_sorted[1:] != value_sorted[:-1])
    pair = np.empty(len(order), dtype=np.int64)
    pair[order] = np.cumsum(new) - 1  # -0.0 and +0.0 compare equal: one pair
    return pair, row_sorted[new], value_sorted[new]


def _count_equal_before(
    dist: np.ndarray,
    pair_row: np.ndarray,
    pair_value: np.ndarray,
    item_pair: np.ndarray,
    item_col: np.ndarray,
) -> np.ndarray:
    """Per item: entries of its pair's row equal to the pair's value at a lower column.

    One ``(chunk, G')`` comparison and int32 running count per ``b // 2`` pairs (~7 bytes per
    entry of the block); ``(len(item_pair),)`` int64.
    """
    before = np.zeros(len(item_pair), dtype=np.int64)
    chunk = max(1, len(dist) // 2)
    for start in range(0, len(pair_row), chunk):
        stop = start + chunk
        equal = dist[pair_row[start:stop]] == pair_value[start:stop, None]  # (c, G')
        seen = np.cumsum(equal, axis=1, dtype=np.int32)  # (c, G') equal ones up to each column
        mine = (start <= item_pair) & (item_pair < stop)
        before[mine] = seen[item_pair[mine] - start, item_col[mine]] - 1  # minus the item itself
    return before


def _stable_positions(
    dist: np.ndarray, rows: np.ndarray, item_row: np.ndarray, item_col: np.ndarray
) -> np.ndarray:
    """Positions of items in their row's (distance, column) order, by a stable sort of ``rows``.

    ``item_row`` (ascending) only holds values of ``rows``. Rows are sorted ``b // 4`` at a time
    (about 24 bytes per entry each); ``(len(item_row),)`` int64.
    """
    positions = [np.zeros(0, dtype=np.int64)]
    chunk = max(1, len(dist) // 4)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        lo, hi = np.searchsorted(item_row, [part[0], part[-1] + 1])
        row = np.searchsorted(part, item_row[lo:hi])  # (n,) row within the part
        positions.append(_sorted_positions(_sortable_copy(dist[part]), row, item_col[lo:hi]))
    return np.concatenate(positions)


def _sorted_positions(keys: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Positions of entries ``(row, col)`` (grouped by row) of ``keys: (p, G)`` in the
    (value, column) order of their row; ``(n,)`` int64.

    32-bit keys are packed with their column into distinct int64 keys (a plain sort of those is
    ~2x faster than a stable argsort and needs no inverse permutation); others are argsorted.
    """
    if keys.itemsize == 4:
        packed = _packed_keys(keys)  # (p, G)
        needles = packed[row, col]
        packed.sort(axis=1)
        slot = np.arange(len(row)) - np.searchsorted(row, row)
        return _count_smaller(packed, needles, row, slot)
    order = np.argsort(keys, axis=1, kind="stable")  # (p, G)
    position_of = np.empty_like(order)
    np.put_along_axis(position_of, order, np.arange(keys.shape[1]), axis=1)
    return position_of[row, col]


def _packed_keys(keys: np.ndarray) -> np.ndarray:
    """``(p, G)`` distinct int64 keys ordered like (value, column) for float32 / int32 ``keys``.

    Key = (the value's bits mapped to an int32 of the same order) << 32 | column. For floats the
    mapping flips the magnitude bits of negative values, after turning -0.0 into +0.0 (they
    compare equal).
    """
    if keys.dtype == np.float32:
        bits = (keys + np.float32(0)).view(np.int32)  # (p, G) new array; -0.0 + 0 = +0.0
        bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # now ordered like the floats
    else:
        bits = keys
    packed = bits.astype(np.int64) << 32
    packed |= np.arange(keys.shape[1], dtype=np.int64)
    return packed


def _sortable_copy(dist: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``dist`` in the narrowest dtype that holds it exactly.

    numpy sorts float32 and int32 with AVX2/AVX-512 SIMD code, about 4x faster than float64 or
    int64, so: float16 -> float32; float64 -> float32 when every value is a float32; integers
    -> int32 when they fit; uint64 -> int64 with the top bit flipped (same order).

    Raises:
        TypeError: a float dtype wider than float64 holds values float64 cannot represent.
    """
    if dist.dtype.kind == "f":
        for dtype in (np.float32, np.float64):
            narrow = dist.astype(dtype)
            if dist.itemsize <= narrow.itemsize or np.array_equal(narrow, dist, equal_nan=True):
                return narrow
        raise TypeError(f"distmat of dtype {dist.dtype} must hold float64 values; cast it")
    if dist.dtype.itemsize < 4 or dist.dtype == np.int32 or _within_int32(dist):
        return dist.astype(np.int32)
    if dist.dtype == np.uint64:
        return (dist ^ np.uint64(2**63)).view(np.int64)
    return dist.astype(np.int64)


def _within_int32(dist: np.ndarray) -> bool:
    int32 = np.iinfo(np.int32)
    return dist.size == 0 or (int32.min <= dist.min() and dist.max() <= int32.max)


def _hit_ranks(items: _Items, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block row and 1-based rank among kept gallery items of every correct match.

    A correct match's rank is its position in the row, plus one, minus the dropped items before
    it. Returns two ``(num_hits,)`` int64 arrays, grouped by row and, within a row, in
    increasing rank.
    """
    order = np.lexsort((positions, items.row))  # by row, then position; rows keep their slots
    row, position, dropped = items.row[order], positions[order], items.dropped[order]
    dropped_before = np.cumsum(dropped) - dropped  # (N,) over the whole block
    dropped_before -= dropped_before[items.start[row]]  # ... within the row
    hit = ~dropped
    return row[hit], (position + 1 - dropped_before)[hit]


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


# --- same-pid gallery items ----------------------------------------------------------------------


def _same_pid_index(labels: _Labels) -> _SamePid:
    """Group the non-junk gallery columns by pid and find each query's group."""
    is_junk = labels.g_pids == JUNK_PID
    g_pids = labels.g_pids[~is_junk]  # (G',)
    by_pid = np.argsort(g_pids, kind="stable")  # stable: columns ascend within a pid
    pids, starts, counts = np.unique(g_pids[by_pid], return_index=True, return_counts=True)
    group = np.searchsorted(pids, labels.q_pids).clip(max=max(len(pids) - 1, 0))  # (Q,)
    found = pids[group] == labels.q_pids if len(pids) else np.zeros(len(group), dtype=bool)
    return _SamePid(
        kept_cols=np.flatnonzero(~is_junk) if is_junk.any() else None,
        junk_cols=np.flatnonzero(is_junk),
        by_pid=by_pid,
        g_camids=labels.g_camids[~is_junk],
        q_start=np.where(found, starts[group] if len(pids) else 0, 0),
        q_count=np.where(found, counts[group] if len(pids) else 0, 0),
        q_camids=labels.q_camids,
    )


def _block_items(same_pid: _SamePid, rows: slice) -> _Items:
    """The same-pid gallery items of the queries ``rows``."""
    counts = same_pid.q_count[rows]  # (b,)
    start = np.cumsum(counts) - counts  # (b,)
    row = np.repeat(np.arange(len(counts)), counts)  # (N,)
    slot = np.arange(len(row)) - start[row]
    col = same_pid.by_pid[same_pid.q_start[rows][row] + slot]
    dropped = same_pid.g_camids[col] == same_pid.q_camids[rows][row]
    return _Items(row=row, col=col, slot=slot, start=start, dropped=dropped)


# --- input handling ------------------------------------------------------------------------------


def _num_workers() -> int:
    return max(1, torch.get_num_threads())


def _row_blocks(num_rows: int, block_size: int) -> Iterator[slice]:
    for start in range(0, num_rows, block_size):
        yield slice(start, min(start + block_size, num_rows))


def _row_blocks_from(rows: slice, block_size: int) -> Iterator[slice]:
    """``rows`` cut into slices of ``block_size`` rows (absolute indices)."""
    for start in range(rows.start, rows.stop, block_size):
        yield slice(start, min(start + block_size, rows.stop))


def _cpu_block(block: ArrayLike) -> np.ndarray:
    """A ``(b, G)`` block of ``distmat`` as a CPU numpy array (a view when possible)."""
    if isinstance(block, np.ndarray):
        return block
    block = block.detach().cpu()
    return (block.float() if block.dtype == torch.bfloat16 else block).numpy()


def _check_no_nan(row_has_nan: np.ndarray, rows: slice) -> None:
    if row_has_nan.any():
        row = rows.start + int(np.argmax(row_has_nan))
        raise ValueError(f"distmat contains NaN (query row {row})")


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


def _resolve_block_size(block_size: int | None, num_gallery: int, workers: int) -> int:
    if block_size is None:
        return auto_block_size(num_gallery, num_workers=workers)
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
