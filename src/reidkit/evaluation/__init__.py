"""Evaluation: query-gallery distances and ranking metrics (CMC, mAP, mINP).

``evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)`` follows the Market-1501 protocol
(Zheng et al. 2015); ``evaluate_rank_from_features`` does the same from embeddings without ever
holding the full distance matrix. ``re_ranking`` is k-reciprocal re-ranking (Zhong et al. 2017),
``alpha_query_expansion`` alpha-weighted query expansion (Radenovic et al. 2018).
"""

from reidkit.evaluation.distance import METRICS, compute_distance_matrix
from reidkit.evaluation.rank import (
    RankResult,
    auto_block_size,
    evaluate_rank,
    evaluate_rank_from_features,
)
from reidkit.evaluation.query_expansion import alpha_database_augmentation, alpha_query_expansion
from reidkit.evaluation.rerank import re_ranking, re_ranking_candidates

__all__ = [
    "METRICS",
    "RankResult",
    "alpha_database_augmentation",
    "alpha_query_expansion",
    "auto_block_size",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_from_features",
    "re_ranking",
    "re_ranking_candidates",
]
