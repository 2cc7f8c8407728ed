"""Mutual learning terms between peer models trained together.

* Deep mutual learning (Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018): peer
  ``i`` adds ``mean_{j != i} KL(p_j || p_i)`` on class probabilities, ``p_j`` held constant.
* Metric mutual learning (Zhang et al., "AlignedReID", arXiv 1711.08184, 2017): peer ``i`` adds
  ``mean_{j != i} mean((D_i - sg(D_j))^2)`` on the ``(B, B)`` batch distance matrices.

The other peer's term is detached (``sg``), so each term sends gradients only into peer ``i``;
summing the terms over ``i`` and optimising all peers jointly equals the papers' alternating
per-peer updates with one shared batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .distances import EuclideanDistance


def _check_peers(tensors: Sequence[Tensor], what: str) -> None:
    if len(tensors) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers' {what}, got {len(tensors)}")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"peers' {what} must have one shape, got {sorted(shapes)}")


def deep_mutual_loss(logits: Sequence[Tensor]) -> Tensor:
    """Sum over peers ``i`` of ``mean_{j != i} KL(p_j || p_i)``, batch-averaged.

    Args:
        logits: one ``(B, K)`` tensor per peer (at least 2).

    Returns:
        Scalar. ``KL(p || q) = sum_k p_k (log p_k - log q_k)``, averaged over the batch; ``p_j``
        is detached in peer ``i``'s term.

    Raises:
        ValueError: fewer than 2 peers or shapes differ.
    """
    _check_peers(logits, "logits")
    log_p = [F.log_softmax(z.float(), dim=1) for z in logits]
    total = log_p[0].new_zeros(())
    for i, log_pi in enumerate(log_p):
        terms = [
            F.kl_div(log_pi, log_pj.detach(), reduction="batchmean", log_target=True)
            for j, log_pj in enumerate(log_p)
            if j != i
        ]
        total = total + torch.stack(terms).mean()
    return total


def metric_mutual_loss(features: Sequence[Tensor], distance=None) -> Tensor:
    """Sum over peers ``i`` of ``mean_{j != i} mean((D_i - sg(D_j))^2)``.

    Args:
        features: one ``(B, D_peer)`` tensor per peer (at least 2; widths may differ).
        distance: distance object (default :class:`EuclideanDistance`, smaller is closer).

    Returns:
        Scalar.

    Raises:
        ValueError: fewer than 2 peers or different batch sizes.
    """
    if len(features) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers' features, got {len(features)}")
    if len({f.shape[0] for f in features}) != 1:
        raise ValueError(f"peers' features must share the batch size, got {[tuple(f.shape) for f in features]}")
    distance = distance or EuclideanDistance()
    dists = [distance(f.float(), f.float()) for f in features]  # each (B, B)
    total = dists[0].new_zeros(())
    for i, d_i in enumerate(dists):
        terms = [((d_i - d_j.detach()) ** 2).mean() for j, d_j in enumerate(dists) if j != i]
        total = total + torch.stack(terms).mean()
    return total
