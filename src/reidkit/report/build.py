"""An evaluation report: every number of :mod:`reidkit.report.metrics` for one distance matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import (
    DEFAULT_FPRS,
    CameraPairTable,
    OperatingPoint,
    PairDistances,
    QueryScores,
    RocCurve,
    camera_pair_rank1,
    pair_distances,
    per_query_scores,
    roc_curve,
    tpr_at_fpr,
    worst_queries,
)


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """What ``reidkit eval --report`` shows.

    Attributes:
        cmc: ``(max_rank,)`` float64 CMC curve in [0, 1] over the valid queries.
        metrics: headline numbers as fractions (``rank1``, ``rank5``, ``rank10``, ``mAP``, and
            whatever the caller adds, e.g. ``mINP``).
        pairs: positive and negative pair distances.
        roc: the verification ROC.
        operating_points: TPR and threshold at each requested FPR.
        queries: per-query AP, first correct rank and top ranked gallery indices.
        worst: ``(W,)`` int64 indices of the queries with the lowest AP, lowest first.
        cameras: rank-1 per (query camera, gallery camera).
        q_pids, g_pids, q_camids, g_camids: ``(Q,)`` / ``(G,)`` int64 labels.
        context: free text shown at the top: ``{"dataset": ..., "model": ..., "distance": ...}``.
    """

    cmc: np.ndarray
    metrics: dict
    pairs: PairDistances
    roc: RocCurve
    operating_points: list[OperatingPoint]
    queries: QueryScores
    worst: np.ndarray
    cameras: CameraPairTable
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    context: dict = field(default_factory=dict)

    @property
    def num_valid_queries(self) -> int:
        return int(self.queries.valid.sum())


def build_report(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    max_rank: int = 50,
    fprs: Sequence[float] = DEFAULT_FPRS,
    num_worst: int = 10,
    keep_top: int = 10,
    metrics: dict | None = None,
    context: dict | None = None,
) -> EvaluationReport:
    """Compute an :class:`EvaluationReport` from ``(num_query, num_gallery)`` distances.

    Args:
        distmat: distances, smaller is closer (numpy array or torch tensor).
        q_pids, g_pids, q_camids, g_camids: integer labels, as for ``evaluate_rank``.
        max_rank: length of the CMC curve.
        fprs: false positive rates of the verification operating points.
        num_worst: how many of the lowest-AP queries to list.
        keep_top: ranked gallery items kept per query (shown for the worst ones).
        metrics: headline numbers to show (e.g. ``RankResult.as_dict()``, which may come from
            another protocol such as single-gallery-shot); default: rank-1/5/10 and mAP of
            ``distmat``.
        context: text shown at the top of the report.

    Raises:
        ValueError: mismatched shapes, NaN, no query with a correct match, or no positive or no
            negative pair. TypeError: non-integer labels.
    """
    queries = per_query_scores(distmat, q_pids, g_pids, q_camids, g_camids, keep_top=keep_top)
    valid = queries.valid
    if not valid.any():
        raise ValueError("no query has a correct match in the gallery: nothing to report")
    ranks = queries.first_rank[valid]
    cmc = np.array([np.mean(ranks <= k) for k in range(1, max_rank + 1)], dtype=np.float64)
    pairs = pair_distances(distmat, q_pids, g_pids, q_camids, g_camids)
    default = {f"rank{k}": float(cmc[k - 1]) for k in (1, 5, 10) if k <= max_rank}
    default["mAP"] = float(np.nanmean(queries.ap))
    labels = [np.asarray(v.cpu() if hasattr(v, "cpu") else v).astype(np.int64) for v in (q_pids, g_pids, q_camids, g_camids)]
    return EvaluationReport(
        cmc=cmc,
        metrics=dict(metrics) if metrics else default,
        pairs=pairs,
        roc=roc_curve(pairs.positive, pairs.negative),
        operating_points=tpr_at_fpr(pairs.positive, pairs.negative, fprs),
        queries=queries,
        worst=worst_queries(queries, num_worst),
        cameras=camera_pair_rank1(distmat, q_pids, g_pids, q_camids, g_camids),
        q_pids=labels[0], g_pids=labels[1], q_camids=labels[2], g_camids=labels[3],
        context=dict(context or {}),
    )


def distances_for(q, g, cfg):
    """``(Q, G)`` float32 distances (smaller is closer) that ``evaluate_features`` ranks by, and
    their description: normalisation and query expansion, then re-ranking, the AlignedReID
    combined distance, or ``cfg.eval.metric``.

    Args:
        q, g: query and gallery :class:`~reidkit.evaluation.features.Features`.
        cfg: the :class:`~reidkit.engine.config.Config`.

    Returns:
        ``(distmat torch.Tensor, description str)``.
    """
    from ..engine.evaluate import prepare_features, query_gallery_distances

    e = cfg.eval
    qf, gf = prepare_features(q.features, g.features, cfg)
    what = f"{e.metric} distance of {'L2-normalised ' if e.normalize else ''}embeddings"
    if e.aqe is not None:
        what += " after alpha query expansion"
    if e.rerank is not None:
        return query_gallery_distances(qf, gf, cfg), f"k-reciprocal re-ranked distance ({what.replace(e.metric, 'squared Euclidean')})"
    if e.local_weight > 0 and q.local is not None and g.local is not None:
        from ..evaluation.aligned import combined_distance_matrix

        return (combined_distance_matrix(qf, gf, q.local, g.local, e.metric, e.local_weight),
                f"{what} + {e.local_weight} x AlignedReID local distance")
    return query_gallery_distances(qf, gf, cfg), what
