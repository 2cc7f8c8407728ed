"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), sparse and memory-bounded.

The result equals the authors' reference code (``re_ranking.py``, also carried by torchreid and
fast-reid) step by step, over all ``N = Q + G`` items (queries first):

1. ``d[i, j] = ||x_i - x_j||^2 / max_k ||x_i - x_k||^2``: squared Euclidean distance, each row
   divided by its maximum over all ``N`` items (the reference divides each column of the
   symmetric matrix by its maximum and transposes it, which is the same thing).
2. ``R(i)``: the members ``j`` of the ``k1 + 1`` nearest of ``i`` (``i`` itself included) that
   have ``i`` among their own ``k1 + 1`` nearest.
3. Expansion: for each ``c`` in ``R(i)``, the same set ``R_half(c)`` with ``round(k1 / 2)``
   (``np.around``: halves to even) is added when more than 2/3 of it lies in ``R(i)``; ``E(i)``
   is the union.
4. ``V[i, j] = exp(-d[i, j]) / sum_{j' in E(i)} exp(-d[i, j'])`` for ``j`` in ``E(i)``, else 0.
5. Local query expansion (when ``k2 != 1``): row ``i`` of ``V`` becomes the mean of the rows of
   its ``k2`` nearest (``i`` itself included).
6. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])`` (every row of
   ``V`` sums to 1, so ``2 - s`` is the sum of the maxima), for query rows ``i``.
7. ``final = (1 - lambda) * jaccard + lambda * d``, query rows against gallery columns.

How it stays small: nothing ``(N, N)`` is ever held. The ``N x N`` distances are produced once,
in square blocks of the symmetric matrix (each block serves its rows and its columns, so half the
products of a full pass); each block updates the row maxima and the running ``k`` nearest of its
rows and columns, keeping only the few entries below each row's current ``k``-th smallest
distance. ``V`` is a CSR matrix with a few dozen entries per row; the Jaccard sums run over an
inverted index (gallery rows per column), so they only touch shared non-zeros. Extra memory is
one ``(block, block)`` buffer, ``O(N * (k1 + 1))`` neighbour lists and sparse entries, and chunked
temporaries, besides the ``(Q, G)`` result: measured (``benchmarks/bench_rerank.py``, 512-d)
0.44 GiB in all at Market-1501 size (N = 19,281, result included), 0.7 GiB besides the 3.6 GiB
result at MSMT17 size (N = 93,820). All steps are vectorised torch and run on the CPU's threads or
on CUDA; the cost is dominated by the ``N^2 / 2`` dot products of the distance pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[np.ndarray, Tensor]

_CPU_BLOCK = 4096  # rows of a distance block on the CPU: (4096, 4096) float32 = 64 MiB
_CUDA_BLOCK = 8192
_RUN = 32  # columns whose minimum is tested at once when looking for near entries
_SET_ROWS = 1024  # rows per chunk when building expansion sets
_MAX_CONTRIBUTIONS = 1 << 22  # shared non-zeros summed per Jaccard chunk (bounds its temporaries)
_MAX_DENSE = 1 << 22  # entries of a dense (rows, G) Jaccard accumulator


class _Csr(NamedTuple):
    """Sparse rows: row ``i`` holds ``col[crow[i]:crow[i + 1]]`` (sorted) and ``val`` there."""

    crow: Tensor  # (N + 1,) int64
    col: Tensor  # (nnz,) int64
    val: Tensor  # (nnz,) float


class _Neighbours(NamedTuple):
    """The ``k`` nearest of every item (ascending distance) and each row's maximum distance."""

    index: Tensor  # (N, k) int64
    dist: Tensor  # (N, k) squared Euclidean distances to them
    row_max: Tensor  # (N,) squared Euclidean, float


def re_ranking(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """k-reciprocal re-ranked query-gallery distances (Zhong et al., CVPR 2017).

    Exactly the algorithm of the authors' reference code (see the module docstring for the
    steps), with squared Euclidean original distances over all ``Q + G`` items; the paper's
    setting is ``k1=20, k2=6, lambda_value=0.3``. Queries take part in each other's
    neighbourhoods, as in the reference (re-ranking is transductive over the query set).
    torchreid's copy squares the distance matrix it is given, which is the fourth power when it is
    given squared distances; this function follows the authors (squared, once).

    Deviations from the reference, all at the level of rounding: distances are accumulated in
    another order (differences ~1e-7), and equal distances among an item's nearest neighbours are
    ordered as :func:`torch.topk` returns them (the reference's ``np.argsort`` quicksort is not
    stable either); with distinct distances the neighbour sets, and so the result, are the same.

    Memory and time: no ``(N, N)`` matrix (``N = Q + G``); see the module docstring. Measured by
    ``benchmarks/bench_rerank.py``. On CUDA the matrix products follow torch's float32 matmul
    precision: keep the default ``"highest"`` (no TF32) for results equal to the reference.

    Args:
        query_features: ``(Q, D)`` query embeddings (torch tensor or numpy array, float).
        gallery_features: ``(G, D)`` gallery embeddings.
        k1: size of the k-reciprocal neighbourhoods (``k1 + 1`` nearest, self included), >= 1.
        k2: neighbours averaged by the local query expansion (self included), >= 1; 1 skips it.
        lambda_value: weight of the original distance, in ``[0, 1]``; ``1 - lambda_value`` weighs
            the Jaccard distance.
        block_size: rows of a distance block; ``None``: 4096 on the CPU, 8192 on CUDA.
        device: where to compute; ``None``: CUDA when available, else the features' device.

    Returns:
        ``(Q, G)`` re-ranked distances, smaller is closer, in ``[0, 1]``: float32 (float64 when
        both inputs are float64), on the device of ``query_features``.

    Raises:
        TypeError: a feature matrix is not a real-valued tensor / array.
        ValueError: a feature matrix is not 2-D, is empty or non-finite, the two ``D`` differ, all
            items coincide, or ``k1``, ``k2``, ``lambda_value``, ``block_size`` is out of range.
    """
    qf, gf = as_feature_pair(query_features, gallery_features)
    params = _check_params(k1, k2, lambda_value, block_size)
    home, dev = qf.device, _resolve_device(device, qf.device)
    x = torch.cat([qf, gf]).to(device=dev, dtype=compute_dtype(qf, gf))
    with torch.no_grad():
        out = torch.empty(len(qf), len(gf), dtype=x.dtype, device=dev)
        nb, v = _encode(x, len(qf), params, sink=out)
        _combine(out, v, nb.row_max[: len(qf)], len(qf), lambda_value)
    return out.to(home)


def re_ranking_candidates(
    query_features: ArrayLike,
    candidate_features: ArrayLike,
    candidate_index: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    block_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """k-reciprocal re-ranking of retrieved candidates (e.g. the top-n of a faiss search).

    The result is ``re_ranking(query_features, candidate_features, ...)`` at the listed pairs,
    ``out[q, m] = re_ranking(...)[q, candidate_index[q, m]]``, without the ``(Q, C)`` matrix.
    Pass the union of the queries' candidates as ``candidate_features`` (each row once)::

        ids = index.search(queries, topk=100).ids                    # (Q, 100) gallery ids
        pool, inverse = torch.unique(ids, return_inverse=True)      # (C,), (Q, 100)
        dist = re_ranking_candidates(queries, index.features(pool), inverse)
        reranked_ids = ids.gather(1, dist.argsort(1))               # smaller distance first

    How it approximates :func:`re_ranking` over the whole gallery: all neighbourhoods and row
    maxima are taken within the queries and the pool instead of the whole gallery. A query's
    ``k1 + 1`` nearest are unchanged when the pool holds its top-n with ``n > k1``; a candidate's
    nearest are searched within the pool only, so its reciprocity test is against a smaller set
    (it can only become easier), and the expansion and the ``k2`` local expansion only see pool
    members. The original-distance term is divided by the largest distance within the pool
    instead of the whole set (a constant per query: the order it gives is unchanged, its weight
    against the Jaccard term grows). The larger ``n`` (100 to 200 for ``k1 = 20`` is usual), the
    closer to the full result; with the whole gallery as the pool it is the full result.

    Args:
        query_features: ``(Q, D)`` query embeddings.
        candidate_features: ``(C, D)`` embeddings of the candidate pool.
        candidate_index: ``(Q, n)`` integer rows of ``candidate_features`` to score per query.
        k1, k2, lambda_value, block_size, device: as in :func:`re_ranking`.

    Returns:
        ``(Q, n)`` re-ranked distances, smaller is closer, float32 (float64 for float64 inputs),
        on the device of ``query_features``; sort each row to re-order the candidates.

    Raises:
        TypeError, ValueError: as :func:`re_ranking`; also when ``candidate_index`` is not an
            integer ``(Q, n)`` array or holds a row outside ``[0, C)``.
    """
    qf, cf = as_feature_pair(query_features, candidate_features, names=("query", "candidate"))
    params = _check_params(k1, k2, lambda_value, block_size)
    home, dev = qf.device, _resolve_device(device, qf.device)
    index = _check_candidate_index(candidate_index, len(qf), len(cf)).to(dev)
    x = torch.cat([qf, cf]).to(device=dev, dtype=compute_dtype(qf, cf))
    with torch.no_grad():
        nb, v = _encode(x, len(qf), params, sink=None)
        dist = _pair_distances(x, torch.arange(len(qf), device=dev), index + len(qf))  # (Q, n)
        _combine(dist, v, nb.row_max[: len(qf)], len(qf), lambda_value, columns=index)
    return dist.to(home)


class _Params(NamedTuple):
    k1: int
    k2: int
    block_size: int | None


def _encode(x: Tensor, num_query: int, p: _Params, sink: Tensor | None) -> tuple[_Neighbours, _Csr]:
    """Steps 1-5: neighbours, k-reciprocal expansion sets, weights, local query expansion.

    ``sink``, when given, receives the raw query-gallery squared distances ``(Q, G)``.
    """
    n = len(x)
    k1, k_half, k2 = min(p.k1 + 1, n), min(round(p.k1 / 2) + 1, n), min(p.k2, n)
    block = p.block_size or (_CUDA_BLOCK if x.is_cuda else _CPU_BLOCK)
    nb = _nearest(x, max(k1, k2), block, num_query, sink)
    if bool((nb.row_max <= 0).any()):
        raise ValueError("re-ranking needs distinct features: every item coincides with all others")
    sets = _expansion_sets(nb.index[:, :k1], nb.index[:, :k_half])
    v = _weights(x, sets, nb)
    if p.k2 != 1:
        v = _local_expansion(v, nb.index[:, :k2])
    return nb, v


# --- step 1: blocked k nearest neighbours and row maxima ------------------------------------


def _blocks(n: int, block: int, k: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``block`` rows, none shorter than ``k`` (the last one absorbs it)."""
    block = max(block, k)
    bounds = [(s, min(s + block, n)) for s in range(0, n, block)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < k:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _nearest(x: Tensor, k: int, block: int, num_query: int, sink: Tensor | None) -> _Neighbours:
    """The ``k`` nearest of each row of ``x`` (itself included) and each row's largest distance.

    Squared distances come from one matrix product of augmented rows,
    ``[x_i, |x_i|^2, 1] . [-2 x_j, 1, |x_j|^2]``. Diagonal blocks seed each row's ``k`` nearest
    by a top-k; an off-diagonal block ``(I, J)`` then offers its rows to ``I`` and its columns to
    ``J``, keeping only the entries below the current ``k``-th smallest distance of their row.
    """
    n = len(x)
    sq = x.pow(2).sum(1, keepdim=True)  # (N, 1)
    left = torch.cat([x, sq, torch.ones_like(sq)], 1)  # (N, D + 2)
    right = torch.cat([x * -2, torch.ones_like(sq), sq], 1)  # (N, D + 2)
    bounds = _blocks(n, block, k)
    best = x.new_empty(n, k), torch.empty(n, k, dtype=torch.long, device=x.device)
    row_max = x.new_empty(n)
    buf = x.new_empty(max(b - a for a, b in bounds) ** 2)
    for a, b in bounds:
        s = torch.mm(left[a:b], right[a:b].T, out=buf[: (b - a) ** 2].view(b - a, b - a))
        values, index = s.topk(k, dim=1, largest=False)
        best[0][a:b], best[1][a:b] = values, index + a
        row_max[a:b] = s.amax(1)
        _sink(sink, s, a, b, a, b, num_query)
    for i, (a, b) in enumerate(bounds):
        for c, d in bounds[i + 1 :]:
            s = torch.mm(left[a:b], right[c:d].T, out=buf[: (b - a) * (d - c)].view(b - a, d - c))
            _offer(best, row_max, s, a, c)
            _sink(sink, s, a, b, c, d, num_query)
    return _Neighbours(best[1], best[0], row_max)


def _sink(sink: Tensor | None, s: Tensor, a: int, b: int, c: int, d: int, num_query: int) -> None:
    """Copy the query-row, gallery-column part of block ``s = D[a:b, c:d]`` into ``sink (Q, G)``."""
    if sink is None or a >= num_query or d <= num_query:
        return
    rows, cols = slice(0, min(b, num_query) - a), slice(max(c, num_query) - c, d - c)
    sink[a : a + rows.stop, cols.start + c - num_query : d - num_query] = s[rows, cols]


def _offer(best: tuple[Tensor, Tensor], row_max: Tensor, s: Tensor, row0: int, col0: int) -> None:
    """Merge block ``s = D[row0:, col0:]`` into ``best`` and ``row_max``: its rows into items
    ``row0 + r``, its columns into items ``col0 + c``.

    Only entries below their item's current ``k``-th smallest distance can enter ``best``.
    """
    values, index = best
    for dim, first, other in ((1, row0, col0), (0, col0, row0)):
        end = first + s.shape[1 - dim]
        items, others, offered, peak = _below(s, values[first:end, -1], dim)
        torch.maximum(row_max[first:end], peak, out=row_max[first:end])
        if len(items):
            _merge(values, index, items + first, others + other, offered)


def _below(s: Tensor, tau: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries of ``s (b, c)`` below their item's threshold ``tau``, and each item's maximum.

    Items are the rows (``dim=1``: ``s[r, c] < tau[r]``) or the columns (``dim=0``:
    ``s[r, c] < tau[c]``). Returns ``(items ascending, other index, values, maxima)``.

    Hand-written two-level search instead of ``(s < tau).nonzero()`` and ``s.amax(dim)``, which
    cost several times more on the CPU: the minimum and maximum of every run of ``_RUN`` entries
    along ``dim`` are taken (one cache-friendly reduction each), and only the runs whose minimum
    is below ``tau`` are looked into.
    """
    length = s.shape[dim] - s.shape[dim] % _RUN
    runs = s.narrow(dim, 0, length).unflatten(dim, (length // _RUN, _RUN))  # run axis: dim + 1
    mins = runs.amin(dim + 1)  # (b, m) or (m, c)
    peak = runs.amax(dim + 1).amax(dim) if length else tau.new_full(tau.shape, -math.inf)
    tau_b = tau[:, None] if dim == 1 else tau[None, :]
    hit = (mins < tau_b).nonzero(as_tuple=True)
    item, run = hit if dim == 1 else hit[::-1]
    if dim == 1 and length == s.shape[1] and s.is_contiguous():  # rows of runs: a plain row gather
        found = s.view(-1, _RUN).index_select(0, item * mins.shape[1] + run)  # (h, _RUN)
    else:
        found = runs[item, run] if dim == 1 else runs[run, :, item]  # (h, _RUN)
    item, other, vals = _run_entries(found, item, run, tau)
    if length < s.shape[dim]:  # the last entries, fewer than a run
        tail = s.narrow(dim, length, s.shape[dim] - length)
        peak = torch.maximum(peak, tail.amax(dim))
        t_first, t_second = (tail < tau_b).nonzero(as_tuple=True)
        t_item, t_other = (t_first, t_second + length) if dim == 1 else (t_second, t_first + length)
        item, other = torch.cat([item, t_item]), torch.cat([other, t_other])
        vals = torch.cat([vals, tail[t_first, t_second]])
    if dim == 0 or length < s.shape[dim]:
        order = torch.argsort(item, stable=True)
        item, other, vals = item[order], other[order], vals[order]
    return item, other, vals, peak


def _run_entries(found: Tensor, item: Tensor, run: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries below ``tau[item]`` in the runs ``found (h, _RUN)``: ``(item, other index, value)``.

    Most runs hold one such entry, their minimum (found by ``argmin``, cheaper than ``nonzero``);
    the runs holding more are searched with ``nonzero``.
    """
    below = found < tau[item, None]  # (h, _RUN)
    several = below.sum(1) > 1
    low, first = found.min(1)
    if not bool(several.any()):
        return item, run * _RUN + first, low
    many = several.nonzero()[:, 0]
    sel, offset = below[many].nonzero(as_tuple=True)
    one = (~several).nonzero()[:, 0]
    item = torch.cat([item[one], item[many[sel]]])
    other = torch.cat([run[one] * _RUN + first[one], run[many[sel]] * _RUN + offset])
    vals = torch.cat([low[one], found[many[sel], offset]])
    order = torch.argsort(item, stable=True)
    return item[order], other[order], vals[order]


def _merge(values: Tensor, index: Tensor, rows: Tensor, cols: Tensor, offered: Tensor) -> None:
    """Keep the ``k`` smallest of each row's current and offered entries (``rows`` ascending)."""
    k = values.shape[1]
    uniq, counts = torch.unique_consecutive(rows, return_counts=True)
    slot = torch.repeat_interleave(torch.arange(len(uniq), device=rows.device), counts)
    pos = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[slot]
    width = int(counts.max())
    cand = values.new_full((len(uniq), k + width), math.inf)  # (u, k + width)
    cand_index = index.new_full((len(uniq), k + width), -1)
    cand[:, :k], cand_index[:, :k] = values[uniq], index[uniq]
    cand[slot, pos + k], cand_index[slot, pos + k] = offered, cols
    top = cand.topk(k, dim=1, largest=False)  # sorted ascending
    values[uniq], index[uniq] = top.values, cand_index.gather(1, top.indices)


# --- steps 2-4: k-reciprocal sets, their expansion, Gaussian weights ------------------------


def _reciprocal(nearest: Tensor) -> Tensor:
    """``(N, k)`` bool: is row ``i`` among the ``k`` nearest of its neighbour ``nearest[i, m]``."""
    n = len(nearest)
    rows = torch.arange(n, device=nearest.device)[:, None]
    return torch.isin(nearest * n + rows, rows * n + nearest)


def _expansion_sets(near: Tensor, near_half: Tensor) -> _Csr:
    """``E(i)``: k-reciprocal set of ``i`` and the accepted half sets of its members, as CSR.

    ``near``: ``(N, k1 + 1)`` nearest; ``near_half``: ``(N, round(k1 / 2) + 1)`` nearest. The
    columns of each row are sorted and unique; ``val`` is left empty.
    """
    n = len(near)
    recip, recip_half = _reciprocal(near), _reciprocal(near_half)
    members = []
    for start in range(0, n, _SET_ROWS):
        cand, ok = near[start : start + _SET_ROWS], recip[start : start + _SET_ROWS]  # (b, k1 + 1)
        half, half_ok = near_half[cand], recip_half[cand] & ok[..., None]  # (b, k1 + 1, kh)
        own = cand.masked_fill(~ok, -1)  # R(i), padded with -1
        inside = (half[..., None] == own[:, None, None, :]).any(-1) & half_ok  # (b, k1 + 1, kh)
        # the reference's float comparison: len(intersection) > 2/3 * len(half set)
        accept = ok & (inside.sum(-1).double() > 2.0 / 3 * half_ok.sum(-1).double())
        added = half.masked_fill(~(accept[..., None] & half_ok), n).flatten(1)
        members.append(_unique_rows(torch.cat([cand.masked_fill(~ok, n), added], 1), n))
    return _concat_rows(members, n)


def _unique_rows(padded: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Sorted unique values per row of ``padded (b, m)``, ``pad`` left out: ``(counts, values)``."""
    padded = padded.sort(1).values
    keep = padded != pad
    keep[:, 1:] &= padded[:, 1:] != padded[:, :-1]
    return keep.sum(1), padded[keep]


def _concat_rows(parts: list[tuple[Tensor, Tensor]], n: int) -> _Csr:
    counts = torch.cat([c for c, _ in parts])
    crow = torch.zeros(n + 1, dtype=torch.long, device=counts.device)
    crow[1:] = counts.cumsum(0)
    return _Csr(crow, torch.cat([v for _, v in parts]), torch.empty(0, device=counts.device))


def _weights(x: Tensor, sets: _Csr, nb: _Neighbours) -> _Csr:
    """Step 4: ``V[i, j] = exp(-d[i, j])`` normalised over ``E(i)``, ``d`` row-normalised.

    Most members of ``E(i)`` are among the nearest of ``i``, whose distances are known; the
    others are computed from the features.
    """
    n = len(x)
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), sets.crow.diff())  # (nnz,)
    dist = torch.empty(len(rows), dtype=x.dtype, device=x.device)
    step = max(1, _MAX_CONTRIBUTIONS // nb.index.shape[1])
    for lo in range(0, len(rows), step):
        r, c = rows[lo : lo + step], sets.col[lo : lo + step]
        match = nb.index[r] == c[:, None]  # (e, k)
        known = match.any(1)
        d = nb.dist[r].gather(1, match.int().argmax(1, keepdim=True))[:, 0]
        if not bool(known.all()):
            d[~known] = _pair_distances(x, r[~known], c[~known, None])[:, 0]
        dist[lo : lo + step] = d
    weight = torch.exp(-(dist.clamp_(min=0) / nb.row_max[rows]))
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, rows, weight)
    return _Csr(sets.crow, sets.col, weight / total[rows])


def _pair_distances(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``(R, m)`` squared distances between ``x[rows[r]]`` and ``x[cols[r, m]]``, in row chunks."""
    out = x.new_empty(cols.shape)
    step = max(1, _MAX_CONTRIBUTIONS // max(1, cols.shape[1] * x.shape[1]))
    for lo in range(0, len(rows), step):
        xr, xc = x[rows[lo : lo + step]], x[cols[lo : lo + step]]  # (r, D), (r, m, D)
        dot = torch.bmm(xc, xr[:, :, None])[..., 0]  # (r, m)
        out[lo : lo + step] = xr.pow(2).sum(1)[:, None] + xc.pow(2).sum(2) - 2 * dot
    return out


# --- step 5: local query expansion ----------------------------------------------------------


def _gather_rows(v: _Csr, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of CSR rows ``rows (m,)``: ``(position in rows, column, value)`` per entry."""
    start, counts = v.crow[rows], v.crow[rows + 1] - v.crow[rows]
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    offset = torch.arange(len(owner), device=rows.device) - (counts.cumsum(0) - counts)[owner]
    src = start[owner] + offset
    return owner, v.col[src], v.val[src]


def _local_expansion(v: _Csr, near: Tensor) -> _Csr:
    """Step 5: row ``i`` becomes the mean of the rows of its ``k2`` nearest ``near[i]``."""
    n, k2 = near.shape
    parts, values = [], []
    for start in range(0, n, 2048):
        block = near[start : start + 2048]  # (b, k2)
        owner, col, val = _gather_rows(v, block.flatten())
        key = torch.div(owner, k2, rounding_mode="floor") * n + col
        uniq, inverse = torch.unique(key, return_inverse=True)  # sorted: by row, then column
        total = torch.zeros(len(uniq), dtype=val.dtype, device=val.device).index_add_(0, inverse, val)
        values.append(total / k2)
        counts = torch.bincount(torch.div(uniq, n, rounding_mode="floor"), minlength=len(block))
        parts.append((counts, uniq % n))
    csr = _concat_rows(parts, n)
    return _Csr(csr.crow, csr.col, torch.cat(values))


# --- steps 6-7: Jaccard distance of query rows, final combination ---------------------------


def _combine(
    out: Tensor, v: _Csr, query_max: Tensor, num_query: int, lam: float, columns: Tensor | None = None
) -> None:
    """Overwrite ``out`` (raw squared distances) with ``(1 - lam) * jaccard + lam * d``, in place.

    ``out`` is ``(Q, G)``, or ``(Q, n)`` for the gallery items ``columns (Q, n)``. With the
    shared mass ``s``, ``jaccard = 1 - s / (2 - s) = 2 + 2 / (s - 2)``, so the result is
    ``lam * d + 2 (1 - lam) + 2 (1 - lam) / (s - 2)``: four passes over each block.
    """
    num_gallery = len(v.crow) - 1 - num_query
    inverted = _inverted_index(v, num_query)
    constant, one = out.new_full((1, 1), 2 * (1 - lam)), out.new_ones((1, 1))
    for lo, hi in _query_chunks(v, inverted, num_query, num_gallery):
        shared = _shared_mass(v, inverted, lo, hi, num_gallery)  # (b, G)
        if columns is not None:
            shared = shared.gather(1, columns[lo:hi])
        block = out[lo:hi].clamp_(min=0)
        torch.addcmul(constant, block, lam / query_max[lo:hi, None], out=block)
        block.addcdiv_(one, shared.sub_(2), value=2 * (1 - lam))


def _inverted_index(v: _Csr, num_query: int) -> _Csr:
    """Gallery rows holding each column of ``v`` (``col`` = gallery position, ``val`` = value)."""
    n = len(v.crow) - 1
    start = int(v.crow[num_query])
    rows = torch.repeat_interleave(torch.arange(n, device=v.col.device), v.crow.diff())[start:]
    order = torch.argsort(v.col[start:], stable=True)
    crow = torch.zeros(n + 1, dtype=torch.long, device=v.col.device)
    crow[1:] = torch.bincount(v.col[start:], minlength=n).cumsum(0)
    return _Csr(crow, rows[order] - num_query, v.val[start:][order])


def _query_chunks(v: _Csr, inverted: _Csr, num_query: int, num_gallery: int) -> list[tuple[int, int]]:
    """Query row ranges whose shared non-zeros and dense accumulator fit the chunk limits."""
    per_entry = inverted.crow.diff()[v.col[: int(v.crow[num_query])]]  # gallery rows per entry
    cost = torch.zeros(num_query, dtype=torch.long, device=v.col.device)
    owner = torch.repeat_interleave(torch.arange(num_query, device=cost.device), v.crow.diff()[:num_query])
    cost.index_add_(0, owner, per_entry)
    cost = cost.cpu().tolist()
    max_rows = max(1, _MAX_DENSE // max(num_gallery, 1))
    chunks, lo, total = [], 0, 0
    for q, c in enumerate(cost):
        if q > lo and (total + c > _MAX_CONTRIBUTIONS or q - lo >= max_rows):
            chunks.append((lo, q))
            lo, total = q, 0
        total += c
    chunks.append((lo, num_query))
    return chunks


def _shared_mass(v: _Csr, inverted: _Csr, lo: int, hi: int, num_gallery: int) -> Tensor:
    """``(hi - lo, G)``: ``sum_k min(V[q, k], V[Q + g, k])`` over the columns ``k`` both hold."""
    owner, col, val = _gather_rows(v, torch.arange(lo, hi, device=v.col.device))
    g_owner, g_rows, g_val = _gather_rows(inverted, col)  # each query entry meets its column's rows
    mass = torch.zeros((hi - lo) * num_gallery, dtype=v.val.dtype, device=v.val.device)
    mass.index_add_(0, owner[g_owner] * num_gallery + g_rows, torch.minimum(val[g_owner], g_val))
    return mass.view(hi - lo, num_gallery)


# --- input checks -----------------------------------------------------------------------------


def _as_tensor(features: ArrayLike, name: str) -> Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, Tensor) or features.dtype == torch.bool or features.is_complex():
        kind = features.dtype if isinstance(features, Tensor) else type(features).__name__
        raise TypeError(f"{name}_features must be a real-valued torch.Tensor or numpy array, got {kind}")
    return features.detach()


def as_feature_pair(
    first: ArrayLike, second: ArrayLike, names: tuple[str, str] = ("query", "gallery")
) -> tuple[Tensor, Tensor]:
    """Two validated feature matrices ``(M, D)``, ``(N, D)`` as tensors (numpy arrays shared).

    Raises:
        TypeError: an input is not a real-valued torch tensor or numpy array.
        ValueError: an input is not 2-D, is empty or holds NaN/inf (the first such row is
            named), the two ``D`` differ, or the two are on different devices.
    """
    pair = _as_tensor(first, names[0]), _as_tensor(second, names[1])
    for name, f in zip(names, pair):
        if f.ndim != 2 or len(f) == 0:
            shape = tuple(f.shape)
            raise ValueError(f"{name}_features must be a non-empty 2-D (num_{name}, D) matrix, got shape {shape}")
        finite = torch.isfinite(f).all(1)
        if not bool(finite.all()):
            raise ValueError(f"{name}_features holds NaN or inf (row {int((~finite).nonzero()[0])})")
    (m, d1), (n, d2) = pair[0].shape, pair[1].shape
    if d1 != d2:
        raise ValueError(f"{names[0]} and {names[1]} features must have the same D, got ({m}, {d1}) and ({n}, {d2})")
    if pair[0].device != pair[1].device:
        raise ValueError(f"{names[0]} and {names[1]} features are on different devices: {pair[0].device}, {pair[1].device}")
    return pair


def _check_params(k1: int, k2: int, lam: float, block_size: int | None) -> _Params:
    checked = {"k1": k1, "k2": k2, "block_size": 1 if block_size is None else block_size}
    for name, value in checked.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not 0 <= lam <= 1:
        raise ValueError(f"lambda_value must be a number in [0, 1], got {lam!r}")
    return _Params(int(k1), int(k2), None if block_size is None else int(block_size))


def _check_candidate_index(index: ArrayLike, num_query: int, num_candidates: int) -> Tensor:
    index = torch.from_numpy(index) if isinstance(index, np.ndarray) else index
    if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.is_complex() or index.dtype == torch.bool:
        kind = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"candidate_index must be an integer tensor or array (num_query, n), got {kind}")
    if index.ndim != 2 or len(index) != num_query:
        raise ValueError(f"candidate_index must have shape (num_query={num_query}, n), got {tuple(index.shape)}")
    low, high = (int(index.min()), int(index.max())) if index.numel() else (0, 0)
    if low < 0 or high >= num_candidates:
        raise ValueError(
            f"candidate_index must hold rows of candidate_features in [0, {num_candidates}), got [{low}, {high}]"
        )
    return index.long()


def compute_dtype(first: Tensor, second: Tensor) -> torch.dtype:
    """float64 when both inputs are float64, else float32."""
    return torch.float64 if first.dtype == second.dtype == torch.float64 else torch.float32


def _resolve_device(device: torch.device | str | None, default: torch.device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else default
