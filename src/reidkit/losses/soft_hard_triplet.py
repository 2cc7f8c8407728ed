"""Soft hard-mining triplet loss: softmax-weighted positive and negative distances per anchor.

"Soft triplet hard" from the Megvii ReID talk (Chi Zhang, 2017; seed 004): batch-hard mining
(Hermans, Beyer, Leibe 2017) picks the single farthest positive and closest negative of each
anchor; here every positive and negative contributes, harder ones with larger weights. The same
weighting is the "weighted regularization triplet" of Ye et al.'s AGW baseline (TPAMI 2021).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from ._checks import check_non_negative, resolve_distance
from .base import MetricLoss
from .combined import make_distance, register_loss
from .distances import Distance
from .triplet import pair_masks


class SoftHardTripletLoss(MetricLoss):
    """Triplet loss on softmax-weighted mean distances of each anchor.

    For an anchor ``a`` with positives ``P(a)`` and negatives ``N(a)`` (distances smaller is
    closer)::

        d_p(a) = sum_{p in P(a)} softmax_p(d(a, p)) * d(a, p)     # far positives weigh more
        d_n(a) = sum_{n in N(a)} softmax_n(-d(a, n)) * d(a, n)    # close negatives weigh more
        l(a)   = relu(d_p - d_n + margin)   or   softplus(d_p - d_n) with soft_margin=True

    The softmax temperature is 1 in distance units, so the weighting approaches batch-hard as
    distances grow. Gradients flow through the weights too (they are not detached). The loss is
    the mean of ``l`` over anchors with at least one positive and one negative; without any it is
    0 and still part of the autograd graph.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar.

    Args:
        margin: ``alpha >= 0`` of the hard margin (not used with ``soft_margin=True``).
        soft_margin: use ``softplus(d_p - d_n)`` instead of the hard margin.
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.

    Raises:
        ValueError: a negative or non-finite ``margin``.
        TypeError: ``distance`` is not a :class:`Distance`.
    """

    def __init__(
        self, margin: float = 0.3, soft_margin: bool = False, distance: Distance | None = None
    ):
        super().__init__()
        check_non_negative(margin=margin)
        self.margin, self.soft_margin = float(margin), bool(soft_margin)
        self.distance = resolve_distance(distance)

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar loss."""
        distmat = self.distance(features)  # (B, B), smaller is closer
        positive, negative = pair_masks(labels)
        valid = positive.any(dim=1) & negative.any(dim=1)  # (B,) usable anchors
        if not bool(valid.any()):
            return distmat.sum() * 0.0  # no valid anchor: zero, but backward() still works
        d = distmat[valid]  # (A, B)
        gap = softmax_mean(d, positive[valid], 1.0) - softmax_mean(d, negative[valid], -1.0)
        losses = F.softplus(gap) if self.soft_margin else F.relu(gap + self.margin)  # (A,)
        return losses.mean()

    def extra_repr(self) -> str:
        return "soft_margin=True" if self.soft_margin else f"margin={self.margin}"


def softmax_mean(distances: Tensor, mask: Tensor, sign: float) -> Tensor:
    """Per row, the mean of the masked distances weighted by ``softmax(sign * distance)``.

    Args:
        distances: ``(A, B)`` float distances, smaller is closer.
        mask: ``(A, B)`` bool, the entries to average; every row needs at least one ``True``.
        sign: ``+1`` weights far entries more, ``-1`` weights close entries more.

    Returns:
        ``(A,)`` weighted means.
    """
    weights = (sign * distances).masked_fill(~mask, float("-inf")).softmax(dim=1)  # (A, B)
    return (weights * distances).sum(dim=1)


@register_loss("soft_hard_triplet")
def _soft_hard_triplet_from_config(
    margin: float = 0.3, soft_margin: bool = False, distance: str = "euclidean"
) -> SoftHardTripletLoss:
    """:class:`SoftHardTripletLoss` with the distance given by name (see ``make_distance``)."""
    return SoftHardTripletLoss(
        margin=margin, soft_margin=soft_margin, distance=make_distance(distance)
    )
