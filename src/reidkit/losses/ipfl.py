"""IPFL, PAUL's image-level patch feature learning loss: a triplet loss whose positive is an
augmented copy of the anchor and whose negative is mined by cyclic ranking.

Yang et al., "Patch-Based Discriminative Feature Learning for Unsupervised Person
Re-identification", CVPR 2019, the IPFL section; reference code github.com/QizeYang/PAUL
(``src/loss/myloss.py::Ipfl``).

For anchor i (an image's concatenated patch features) with positive p_i (the same for its
augmented copy) and Euclidean distance d (smaller is closer)::

    L = mean_i [margin + d(a_i, p_i) - d(a_i, a_n(i))]_+

Cyclic ranking picks ``n(i)``: walk i's ranked list of the other batch images from the nearest;
candidate j is accepted as a negative only if i is *not* among the r nearest images of j's own
ranked list (a mutual neighbour is likely the same person). The first accepted j is the hardest
negative. Values: margin 2, r = 3 (paper, implementation details; code ``--margin 2``,
``nearest=3``).

Differences from the authors' code, which compares every view with a per-image momentum average
of the (view, augmented view) pair features of a fixed 128-d projection: here the positive is the
augmented copy itself, the candidates are the other anchors of the batch, and everything acts on
the descriptor the model returns, as the paper describes. j's top-r list leaves j itself out (the
code counts j as its own first neighbour, so its top-3 holds 2 others: ``r=2`` here reproduces
that); the code walks at most 15 candidates and then uses a negative distance of 0, here the
whole list is walked and an anchor with no accepted candidate is left out of the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .distances import EuclideanDistance


def cyclic_ranking_negatives(dist: Tensor, r: int = 3) -> Tensor:
    """The hardest negative of every row by cyclic ranking.

    Args:
        dist: ``(B, B)`` distances between the batch images, smaller is closer (the diagonal is
            ignored).
        r: j is rejected as i's negative when i is among j's r nearest other images.

    Returns:
        ``(B,)`` int64: for row i the nearest j != i whose r nearest others exclude i, or ``-1``
        when every candidate is rejected (always the case when ``B - 1 <= r``).

    Raises:
        ValueError: ``dist`` is not square or ``r`` is not a positive integer.
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (B, B) matrix, got {tuple(dist.shape)}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    b = dist.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=dist.device)
    d = dist.detach().masked_fill(eye, float("inf"))  # (B, B), self never ranked
    near = d.topk(min(r, b - 1), dim=1, largest=False).indices  # (B, r) j's nearest others
    in_top = torch.zeros(b, b, dtype=torch.bool, device=dist.device).scatter_(1, near, True)  # [j, i]
    rejected = in_top.T | eye  # [i, j]: i is in j's top-r, or j == i
    best = d.masked_fill(rejected, float("inf")).argmin(dim=1)  # (B,)
    found = ~rejected.gather(1, best[:, None]).squeeze(1)
    return torch.where(found, best, torch.full_like(best, -1))


def ipfl_loss(anchor: Tensor, positive: Tensor, margin: float = 2.0, r: int = 3) -> Tensor:
    """IPFL over a batch (see the module docstring).

    Args:
        anchor: ``(B, D)`` float descriptors of the batch images, ``B >= 2``.
        positive: ``(B, D)`` descriptors of their augmented copies, row by row.
        margin: the triplet margin (2 in the paper, on descriptors of norm ``sqrt(M)``).
        r: the cyclic-ranking neighbourhood (3 in the paper).

    Returns:
        Scalar loss: the mean hinge over anchors that have a negative; 0 (still attached to the
        graph) when none has.

    Raises:
        ValueError: shapes differ, are not ``(B, D)`` float with ``B >= 2``, ``margin < 0`` or
            ``r`` is not a positive integer.
    """
    if anchor.dim() != 2 or not anchor.is_floating_point() or anchor.shape[0] < 2:
        raise ValueError(f"anchor must be (B, D) floating with B >= 2, got {tuple(anchor.shape)} {anchor.dtype}")
    if positive.shape != anchor.shape or positive.dtype != anchor.dtype:
        want, got = f"{tuple(anchor.shape)} {anchor.dtype}", f"{tuple(positive.shape)} {positive.dtype}"
        raise ValueError(f"positive must match anchor {want}, got {got}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    dist = EuclideanDistance()(anchor)  # (B, B)
    neg = cyclic_ranking_negatives(dist, r)  # (B,)
    has = neg >= 0
    d_ap = (anchor - positive).pow(2).sum(1).clamp_min(1e-12).sqrt()  # (B,)
    d_an = dist.gather(1, neg.clamp_min(0)[:, None]).squeeze(1)  # (B,)
    hinge = (margin + d_ap - d_an).clamp_min(0.0)[has]
    return hinge.mean() if hinge.numel() else anchor.sum() * 0.0


class IPFLLoss(nn.Module):
    """:func:`ipfl_loss` as a module: ``IPFLLoss(margin, r)(anchor (B, D), positive (B, D))``.

    Args:
        margin: the triplet margin (2).
        r: the cyclic-ranking neighbourhood (3).

    Raises:
        ValueError: ``margin < 0`` or ``r`` is not a positive integer.
    """

    def __init__(self, margin: float = 2.0, r: int = 3):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}")
        self.margin, self.r = float(margin), r

    def forward(self, anchor: Tensor, positive: Tensor) -> Tensor:
        """``anchor, positive: (B, D)`` -> scalar loss."""
        return ipfl_loss(anchor, positive, self.margin, self.r)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, r={self.r}"
