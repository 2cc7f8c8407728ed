"""Alpha-weighted query expansion (alpha-QE) and its gallery-side twin (database augmentation).

Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018:
a query is replaced by the weighted sum of itself and its ``k`` most similar gallery items, each
weighted by its similarity raised to the power ``alpha``, then L2-normalised again. ``alpha = 0``
is average query expansion (Chum et al., ICCV 2007); a large ``alpha`` keeps only the closest.

Similarity is the inner product of L2-normalised features (cosine, larger is closer), and
negative similarities are clamped at 0 before the power (so a dissimilar neighbour adds nothing
for ``alpha > 0``). The query itself enters with weight 1 (its own similarity is 1). Among
gallery items with equal similarity at the ``k``-th place, the ones :func:`torch.topk` returns are
taken (unspecified order). The gallery is searched one block of queries at a time, so the extra
memory stays near :data:`MEMORY_BUDGET_BYTES`.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reidkit.evaluation.rerank import as_feature_pair, compute_dtype

ArrayLike = Union[np.ndarray, Tensor]

MEMORY_BUDGET_BYTES = 256 * 2**20
"""Extra memory aimed for by the blocked similarity search (bytes)."""


def alpha_query_expansion(
    query_features: ArrayLike, gallery_features: ArrayLike, k: int = 10, alpha: float = 3.0
) -> Tensor:
    """New query features: ``normalize(q + sum_j max(s_j, 0) ** alpha * g_j)`` over the top-k.

    ``q`` and ``g_j`` are the L2-normalised query and gallery features and ``s_j = q . g_j`` the
    cosine similarities of the ``k`` most similar gallery items (see the module docstring for the
    method, Radenovic et al. 2018, and tie handling). Evaluate the result against the gallery
    features as before (e.g. cosine or Euclidean distance on normalised features).

    Args:
        query_features: ``(Q, D)`` query embeddings (torch tensor or numpy array).
        gallery_features: ``(G, D)`` gallery embeddings.
        k: gallery neighbours added to each query, in ``[0, G]``; 0 only normalises.
        alpha: exponent of the similarity weights, >= 0.

    Returns:
        ``(Q, D)`` L2-normalised expanded queries, float32 (float64 for float64 inputs), on the
        device of ``query_features``.

    Raises:
        TypeError: a feature matrix is not a real-valued tensor / array.
        ValueError: a feature matrix is not 2-D, is empty or non-finite, the two ``D`` differ, or ``k`` /
            ``alpha`` is out of range.
    """
    qf, gf = _check(query_features, gallery_features, k, alpha)
    qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    with torch.no_grad():
        return _expand(qf, gf, k, alpha, exclude_self=False)


def alpha_database_augmentation(
    gallery_features: ArrayLike, k: int = 10, alpha: float = 3.0
) -> Tensor:
    """Alpha-weighted database-side augmentation: each gallery item expanded by its gallery top-k.

    ``normalize(g_i + sum_j max(s_ij, 0) ** alpha * g_j)`` over the ``k`` most similar *other*
    gallery items ``j != i`` (by index, so an exact duplicate of ``g_i`` still counts); the same
    rule as :func:`alpha_query_expansion` (Radenovic et al. 2018). Apply it to the gallery, and
    usually :func:`alpha_query_expansion` to the queries against the augmented gallery. It
    compares all ``G^2`` pairs (in blocks of bounded memory), as long as one full distance pass.

    Args:
        gallery_features: ``(G, D)`` gallery embeddings.
        k: neighbours added to each item, in ``[0, G - 1]``.
        alpha: exponent of the similarity weights, >= 0.

    Returns:
        ``(G, D)`` L2-normalised augmented gallery features, float32 (float64 for float64 input).

    Raises:
        TypeError, ValueError: as :func:`alpha_query_expansion` (``k`` must be < ``G``).
    """
    gf, _ = _check(gallery_features, gallery_features, k, alpha, exclude_self=True)
    gf = F.normalize(gf, dim=1)
    with torch.no_grad():
        return _expand(gf, gf, k, alpha, exclude_self=True)


def _expand(qf: Tensor, gf: Tensor, k: int, alpha: float, exclude_self: bool) -> Tensor:
    """``normalize(q + weighted top-k gallery rows)`` for normalised ``qf (Q, D)``, ``gf (G, D)``."""
    out = qf.clone()
    if k == 0:
        return out
    per_row = 8 * len(gf) + 4 * k * gf.shape[1]  # similarities and top-k workspace, gathered rows
    rows = max(1, MEMORY_BUDGET_BYTES // per_row)
    for start in range(0, len(qf), rows):
        block = qf[start : start + rows]
        sim = block @ gf.T  # (b, G), larger is closer
        if exclude_self:
            own = torch.arange(start, start + len(block), device=sim.device)
            sim[torch.arange(len(block), device=sim.device), own] = -torch.inf
        top = sim.topk(k, dim=1)  # (b, k)
        weight = top.values.clamp(min=0).pow(alpha)  # 0 ** 0 = 1: alpha = 0 averages all k
        out[start : start + len(block)] += torch.einsum("bk,bkd->bd", weight, gf[top.indices])
    return F.normalize(out, dim=1)


def _check(
    qf: ArrayLike, gf: ArrayLike, k: int, alpha: float, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    names = ("gallery", "gallery") if exclude_self else ("query", "gallery")
    qf, gf = as_feature_pair(qf, gf, names)
    max_k = len(gf) - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= max_k:
        raise ValueError(f"k must be an integer in [0, {max_k}] (gallery items available), got {k!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 <= alpha < math.inf:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    dtype = compute_dtype(qf, gf)
    return qf.to(dtype), gf.to(dtype)
