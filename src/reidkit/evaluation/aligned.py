"""Query-gallery distances for AlignedReID models: global plus weighted local distance.

AlignedReID (Zhang et al., arXiv 1711.08184) compares two images at test time by the sum of the
global feature distance and the aligned local (stripe) distance of
:func:`reidkit.losses.aligned.local_distance`. Every distance here is *smaller is closer*.
"""

from __future__ import annotations

import math
from numbers import Real

from torch import Tensor

from ..losses.aligned import local_distance_matrix
from .distance import compute_distance_matrix


def combined_distance_matrix(
    q_global: Tensor,
    g_global: Tensor,
    q_local: Tensor,
    g_local: Tensor,
    metric: str = "euclidean",
    local_weight: float = 1.0,
    block_size: int | None = None,
) -> Tensor:
    """``global + local_weight * local`` distances between queries and gallery images.

    The global part is :func:`reidkit.evaluation.compute_distance_matrix` with ``metric``; the
    local part is :func:`reidkit.losses.aligned.local_distance_matrix` (shortest-path aligned
    stripe distance, in ``[0, 2S - 1)``), computed block-wise without autograd.
    ``local_weight=0`` skips the local part (global distance only).

    Args:
        q_global: ``(M, D)`` query embeddings.
        g_global: ``(N, D)`` gallery embeddings.
        q_local: ``(M, S, C)`` query stripe features.
        g_local: ``(N, S, C)`` gallery stripe features.
        metric: global metric, one of :data:`reidkit.evaluation.METRICS`.
        local_weight: finite weight ``>= 0`` of the local distance.
        block_size: query rows per block of the local part; ``None`` picks it from memory.

    Returns:
        ``(M, N)`` float32 distances on the inputs' device, smaller is closer.

    Raises:
        TypeError: a global feature matrix is not a real-valued tensor.
        ValueError: bad shapes (including ``M`` or ``N`` differing between the global and local
            features), unknown ``metric``, or a negative or non-finite ``local_weight``.
    """
    if isinstance(local_weight, bool) or not isinstance(local_weight, Real):
        raise ValueError(f"local_weight must be a finite number >= 0, got {local_weight!r}")
    if not 0 <= local_weight < math.inf:
        raise ValueError(f"local_weight must be a finite number >= 0, got {local_weight!r}")
    _check_rows(q_global, q_local, "q")
    _check_rows(g_global, g_local, "g")
    dist = compute_distance_matrix(q_global, g_global, metric)  # (M, N)
    if local_weight == 0:
        return dist
    local = local_distance_matrix(q_local, g_local, block_size=block_size)  # (M, N)
    return dist.add_(local.to(dist.device), alpha=float(local_weight))


def _check_rows(global_feats: Tensor, local_feats: Tensor, prefix: str) -> None:
    if not isinstance(local_feats, Tensor) or local_feats.dim() != 3:
        got = tuple(local_feats.shape) if isinstance(local_feats, Tensor) else type(local_feats)
        raise ValueError(f"{prefix}_local must be a (num, S, C) tensor, got {got}")
    if isinstance(global_feats, Tensor) and global_feats.shape[0] != local_feats.shape[0]:
        raise ValueError(
            f"{prefix}_global and {prefix}_local must have the same number of rows, got "
            f"{tuple(global_feats.shape)} and {tuple(local_feats.shape)}"
        )
