"""The numbers of an evaluation report, computed from a query-gallery distance matrix.

Every function takes the ``(num_query, num_gallery)`` distances (smaller is closer) and the
labels that :func:`reidkit.evaluation.evaluate_rank` takes, and follows the same Market-1501
rules (Zheng et al., ICCV 2015): gallery items with pid -1 (junk) are ignored, and so are the
items with the query's pid *and* camera; everything else is ranked. Ties are broken by gallery
index, as in ``evaluate_rank``, so the per-query numbers here average to its mAP and rank-1.

* :func:`pair_distances`: distances of the positive (same identity) and negative (different
  identity) query-gallery pairs the protocol ranks: the two distributions a verification
  threshold separates.
* :func:`tpr_at_fpr` and :func:`roc_curve`: same/different-identity verification by a distance
  threshold ("same person when the distance is below the threshold"): true positive rate at a
  false positive rate, with the threshold that achieves it.
* :func:`per_query_scores`: average precision, the rank of the first correct match and the top
  of each query's ranked list; :func:`worst_queries` picks the lowest APs.
* :func:`camera_pair_rank1`: rank-1 with the gallery restricted to one camera, for each pair
  (query camera, gallery camera).

Rows are processed in blocks so the extra memory stays bounded whatever the number of queries;
the matrix may be a numpy array (a memory map is fine) or a torch tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

JUNK_PID = -1
DEFAULT_FPRS = (1e-2, 1e-3, 1e-4)
MAX_NEGATIVES = 20_000_000  # negative distances kept for the ROC (a seeded uniform subsample beyond)
_BLOCK_ELEMENTS = 1 << 22  # distmat entries per block of rows (~16 MiB of float32)


@dataclass(frozen=True, eq=False)
class PairDistances:
    """Distances of the query-gallery pairs the protocol ranks, split by identity.

    Attributes:
        positive: ``(P,)`` float64 distances of same-pid pairs (different cameras by the rules).
        negative: ``(N,)`` float64 distances of different-pid pairs; a seeded uniform subsample
            when there are more than ``max_negatives`` (``num_negative_pairs`` counts them all).
        num_negative_pairs: number of negative pairs before subsampling.
    """

    positive: np.ndarray
    negative: np.ndarray
    num_negative_pairs: int


@dataclass(frozen=True)
class OperatingPoint:
    """Verification at one false positive rate: accept "same identity" when distance < threshold.

    Attributes:
        target_fpr: the false positive rate asked for.
        fpr: the rate reached (<= ``target_fpr``): negative pairs below ``threshold`` / all.
        tpr: positive pairs below ``threshold`` / all positive pairs.
        threshold: the distance (same units as the distance matrix; ``inf`` accepts everything).
        num_negatives: negative pairs measured; below ``1 / target_fpr`` the rate is not
            resolved (``resolved`` is False) and ``threshold`` is the smallest negative distance.
    """

    target_fpr: float
    fpr: float
    tpr: float
    threshold: float
    num_negatives: int

    @property
    def resolved(self) -> bool:
        return self.num_negatives * self.target_fpr >= 1.0


@dataclass(frozen=True, eq=False)
class RocCurve:
    """ROC points of distance-threshold verification, ``fpr`` ascending.

    Attributes:
        fpr: ``(K,)`` false positive rates in [0, 1].
        tpr: ``(K,)`` true positive rates in [0, 1].
        thresholds: ``(K,)`` distances; each point accepts pairs with distance < threshold.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True, eq=False)
class QueryScores:
    """Per-query results of the ranking.

    Attributes:
        ap: ``(Q,)`` float64 average precision; NaN for a query with no correct match.
        first_rank: ``(Q,)`` int64 1-based rank of the first correct match; 0 when there is none.
        ranked: ``(Q, T)`` int64 gallery indices of each query's top-T ranked items (junk and
            same-camera same-pid items removed), padded with -1 when fewer remain.
        ranked_distances: ``(Q, T)`` float64 their distances (smaller is closer), NaN padded.
    """

    ap: np.ndarray
    first_rank: np.ndarray
    ranked: np.ndarray
    ranked_distances: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(Q,)`` bool: the query has at least one correct match."""
        return self.first_rank > 0


@dataclass(frozen=True, eq=False)
class CameraPairTable:
    """Rank-1 for each (query camera, gallery camera), the gallery restricted to that camera.

    Attributes:
        query_cameras: ``(A,)`` int64 camera ids of the queries, ascending.
        gallery_cameras: ``(B,)`` int64 camera ids of the gallery, ascending.
        rank1: ``(A, B)`` float64 fraction in [0, 1] of the queries of camera a whose nearest
            camera-b gallery item is a correct match, among those with a correct match in camera
            b; NaN where there is none (always on the same-camera diagonal, by the rules).
        num_queries: ``(A, B)`` int64 the queries counted in each cell.
    """

    query_cameras: np.ndarray
    gallery_cameras: np.ndarray
    rank1: np.ndarray
    num_queries: np.ndarray


# ---------------------------------------------------------------------------- input
def _as_labels(values, what: str, length: int) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"{what} must have shape ({length},), got {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _check(distmat, q_pids, g_pids, q_camids, g_camids):
    shape = tuple(getattr(distmat, "shape", ()))
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"distmat must be a non-empty (num_query, num_gallery) matrix, got shape {shape}")
    nq, ng = shape
    return (_as_labels(q_pids, "q_pids", nq), _as_labels(g_pids, "g_pids", ng),
            _as_labels(q_camids, "q_camids", nq), _as_labels(g_camids, "g_camids", ng))


def _blocks(distmat) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, (b, G) float64 block)`` over the matrix; NaN is refused."""
    nq, ng = distmat.shape
    step = max(1, _BLOCK_ELEMENTS // ng)
    for start in range(0, nq, step):
        rows = slice(start, min(nq, start + step))
        block = distmat[rows]
        block = np.asarray(block.detach().cpu() if hasattr(block, "detach") else block, dtype=np.float64)
        if np.isnan(block).any():
            raise ValueError(f"distmat holds NaN (rows {rows.start}..{rows.stop - 1})")
        yield rows, block


def _ranked_mask(qp, qc, g_pids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    """``(kept (b, G) bool, same_pid (b, G) bool)`` of a block of queries."""
    same_pid = qp[:, None] == g_pids[None, :]
    kept = (g_pids[None, :] != JUNK_PID) & ~(same_pid & (qc[:, None] == g_camids[None, :]))
    return kept, same_pid


# ---------------------------------------------------------------------------- pairs and verification
def pair_distances(distmat, q_pids, g_pids, q_camids, g_camids, max_negatives: int = MAX_NEGATIVES,
                   seed: int = 0) -> PairDistances:
    """Positive and negative pair distances (see the module docstring for which pairs count).

    Args:
        distmat: ``(num_query, num_gallery)`` distances, smaller is closer.
        q_pids, g_pids, q_camids, g_camids: integer labels as in ``evaluate_rank``.
        max_negatives: keep at most about this many negative distances (a Bernoulli subsample
            with a fixed ``seed``), so an MSMT17-sized gallery needs bounded memory.
        seed: seed of that subsample.

    Returns:
        :class:`PairDistances`.

    Raises:
        ValueError: shapes disagree or the matrix holds NaN. TypeError: non-integer labels.
    """
    q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    total = _count_negatives(q_pids, g_pids)
    keep_p = 1.0 if total <= max_negatives else max_negatives / total
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for rows, block in _blocks(distmat):
        kept, same = _ranked_mask(q_pids[rows], q_camids[rows], g_pids, g_camids)
        pos.append(block[kept & same])
        negatives = block[kept & ~same]
        neg.append(negatives if keep_p >= 1.0 else negatives[rng.random(len(negatives)) < keep_p])
    return PairDistances(np.concatenate(pos), np.concatenate(neg), total)


def _count_negatives(q_pids: np.ndarray, g_pids: np.ndarray) -> int:
    """Number of negative pairs, from the labels alone: every ranked item of another pid."""
    kept = g_pids[g_pids != JUNK_PID]
    counts = dict(zip(*np.unique(kept, return_counts=True)))
    return int(sum(len(kept) - counts.get(p, 0) for p in q_pids.tolist()))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, targets: Sequence[float] = DEFAULT_FPRS) -> list[OperatingPoint]:
    """True positive rate of distance-threshold verification at each target false positive rate.

    The threshold is the largest that keeps the false positive rate at or below the target
    ("same identity" when distance < threshold), which gives the largest TPR there: the
    ``floor(target * N) + 1``-th smallest negative distance.

    Args:
        positive: ``(P,)`` distances of same-identity pairs. negative: ``(N,)`` distances of
            different-identity pairs (:func:`pair_distances`).
        targets: false positive rates in (0, 1].

    Returns:
        One :class:`OperatingPoint` per target, in order.

    Raises:
        ValueError: no positive or no negative pair, or a target outside (0, 1].
    """
    pos, neg = _sorted_pairs(positive, negative)
    points = []
    for target in targets:
        if not 0 < target <= 1:
            raise ValueError(f"false positive rate targets must be in (0, 1], got {target}")
        k = math.floor(target * len(neg) + 1e-9)  # negatives allowed below the threshold
        threshold = float(neg[k]) if k < len(neg) else math.inf
        points.append(OperatingPoint(
            float(target), _rate(neg, threshold), _rate(pos, threshold), threshold, len(neg)))
    return points


def roc_curve(positive: np.ndarray, negative: np.ndarray, num_points: int = 200) -> RocCurve:
    """ROC of distance-threshold verification at thresholds spread log-uniformly in FPR.

    Args:
        positive, negative: pair distances (:func:`pair_distances`).
        num_points: about how many points (the curve always starts at FPR 0 and ends at 1).

    Returns:
        :class:`RocCurve`, FPR ascending.

    Raises:
        ValueError: no positive or no negative pair.
    """
    pos, neg = _sorted_pairs(positive, negative)
    ks = np.unique(np.geomspace(1, len(neg), num=max(2, num_points)).astype(np.int64) - 1)
    thresholds = np.concatenate([[neg[0]], neg[ks], [np.inf]])
    fpr = np.searchsorted(neg, thresholds, side="left") / len(neg)
    tpr = np.searchsorted(pos, thresholds, side="left") / len(pos)
    return RocCurve(fpr, tpr, thresholds)


def _sorted_pairs(positive, negative) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.sort(np.asarray(positive, np.float64)), np.sort(np.asarray(negative, np.float64))
    if not len(pos) or not len(neg):
        raise ValueError(f"verification needs positive and negative pairs, got {len(pos)} and {len(neg)}")
    return pos, neg


def _rate(sorted_values: np.ndarray, threshold: float) -> float:
    return float(np.searchsorted(sorted_values, threshold, side="left") / len(sorted_values))


# ---------------------------------------------------------------------------- per query
def per_query_scores(distmat, q_pids, g_pids, q_camids, g_camids, keep_top: int = 10) -> QueryScores:
    """Average precision, first correct rank and top ranked items of every query.

    Args:
        distmat: ``(num_query, num_gallery)`` distances, smaller is closer.
        q_pids, g_pids, q_camids, g_camids: integer labels as in ``evaluate_rank``.
        keep_top: T, the ranked gallery indices kept per query.

    Returns:
        :class:`QueryScores`; ``nanmean(ap)`` is ``evaluate_rank``'s mAP and
        ``mean(first_rank == 1)`` over valid queries its rank-1.

    Raises:
        ValueError: shapes disagree or the matrix holds NaN. TypeError: non-integer labels.
    """
    q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    nq = len(q_pids)
    ap, first = np.full(nq, np.nan), np.zeros(nq, dtype=np.int64)
    ranked = np.full((nq, keep_top), -1, dtype=np.int64)
    ranked_dist = np.full((nq, keep_top), np.nan)
    for rows, block in _blocks(distmat):
        order = np.argsort(block, axis=1, kind="stable")  # (b, G), ties by gallery index
        kept, same = _ranked_mask(q_pids[rows], q_camids[rows], g_pids, g_camids)
        kept, hits = np.take_along_axis(kept, order, 1), np.take_along_axis(same & kept, order, 1)
        rank = np.cumsum(kept, axis=1)  # (b, G) 1-based rank among kept items
        num_hits = hits.sum(axis=1)
        precision = np.cumsum(hits, axis=1) / np.maximum(rank, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[rows] = np.where(num_hits > 0, (precision * hits).sum(axis=1) / num_hits, np.nan)
        first[rows] = np.where(num_hits > 0, np.take_along_axis(rank, hits.argmax(axis=1)[:, None], 1)[:, 0], 0)
        for i, q in enumerate(range(rows.start, rows.stop)):
            top = order[i][kept[i]][:keep_top]  # the first kept gallery indices in ranked order
            ranked[q, : len(top)], ranked_dist[q, : len(top)] = top, block[i, top]
    return QueryScores(ap, first, ranked, ranked_dist)


def worst_queries(scores: QueryScores, count: int = 10) -> np.ndarray:
    """Indices of the ``count`` valid queries with the lowest AP (lowest first, ties by index).

    Returns:
        ``(min(count, valid),)`` int64 query indices.
    """
    valid = np.flatnonzero(scores.valid)
    order = np.lexsort((valid, scores.ap[valid]))
    return valid[order[:count]]


# ---------------------------------------------------------------------------- cameras
def camera_pair_rank1(distmat, q_pids, g_pids, q_camids, g_camids) -> CameraPairTable:
    """Rank-1 per (query camera, gallery camera): see :class:`CameraPairTable`.

    Raises:
        ValueError: shapes disagree or the matrix holds NaN. TypeError: non-integer labels.
    """
    q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    q_cams, g_cams = np.unique(q_camids), np.unique(g_camids)
    correct = np.zeros((len(q_cams), len(g_cams)), dtype=np.int64)
    counted = np.zeros_like(correct)
    a_of = np.searchsorted(q_cams, q_camids)
    for rows, block in _blocks(distmat):
        kept, same = _ranked_mask(q_pids[rows], q_camids[rows], g_pids, g_camids)
        for b, cam in enumerate(g_cams):
            cols = np.flatnonzero(g_camids == cam)
            k, s = kept[:, cols], same[:, cols]
            valid = (k & s).any(axis=1)
            nearest = np.where(k, block[:, cols], np.inf).argmin(axis=1)  # first minimum: lowest index
            hit = valid & s[np.arange(len(nearest)), nearest] & k[np.arange(len(nearest)), nearest]
            np.add.at(counted[:, b], a_of[rows], valid)
            np.add.at(correct[:, b], a_of[rows], hit)
    with np.errstate(invalid="ignore", divide="ignore"):
        rank1 = np.where(counted > 0, correct / np.maximum(counted, 1), np.nan)
    return CameraPairTable(q_cams, g_cams, rank1, counted)
