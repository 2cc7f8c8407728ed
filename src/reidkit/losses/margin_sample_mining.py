"""Margin sample mining loss (MSML): one hardest triplet-like term per batch.

Xiao, Luo, Zhang, "Margin Sample Mining Loss: A Deep Learning Based Method for Person
Re-identification", arXiv:1710.00478, 2017. Batch-hard triplet mining picks the hardest pair per
anchor; MSML picks the hardest positive pair and the hardest negative pair of the whole batch,
which need not share an image.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from ._checks import check_non_negative, resolve_distance
from .base import MetricLoss
from .combined import make_distance, register_loss
from .distances import Distance
from .triplet import pair_masks


class MarginSampleMiningLoss(MetricLoss):
    """``relu(max_{positive pairs} d - min_{negative pairs} d + margin)`` over the batch.

    Positive pairs are distinct samples of the same identity, negative pairs samples of different
    identities; distances are smaller-is-closer. The gradient reaches only the (tied) farthest
    positive pair and closest negative pair. If the batch has no positive pair (every identity
    once) or no negative pair (one identity) the loss is 0 and still part of the autograd graph.
    The authors' public Keras code uses margin 0.6 on L2-normalised features; the default here is
    reidkit's triplet margin 0.3.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar.

    Args:
        margin: ``alpha >= 0``.
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.

    Raises:
        ValueError: a negative or non-finite ``margin``.
        TypeError: ``distance`` is not a :class:`Distance`.
    """

    def __init__(self, margin: float = 0.3, distance: Distance | None = None):
        super().__init__()
        check_non_negative(margin=margin)
        self.margin = float(margin)
        self.distance = resolve_distance(distance)

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar loss."""
        distmat = self.distance(features)  # (B, B), smaller is closer
        positive, negative = pair_masks(labels)
        if not (bool(positive.any()) and bool(negative.any())):
            return distmat.sum() * 0.0  # no positive or no negative pair
        hardest_pos = distmat[positive].max()  # farthest same-identity pair
        hardest_neg = distmat[negative].min()  # closest different-identity pair
        return F.relu(hardest_pos - hardest_neg + self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


@register_loss("margin_sample_mining")
def _msml_from_config(margin: float = 0.3, distance: str = "euclidean") -> MarginSampleMiningLoss:
    """:class:`MarginSampleMiningLoss` with the distance given by name (see ``make_distance``)."""
    return MarginSampleMiningLoss(margin=margin, distance=make_distance(distance))
