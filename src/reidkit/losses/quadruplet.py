"""Quadruplet loss with in-batch hard mining.

Chen, Chen, Zhang, Huang, "Beyond Triplet Loss: A Deep Quadruplet Network for Person
Re-Identification", CVPR 2017. A quadruplet is an anchor ``a``, a positive ``p`` and negatives
``n1``, ``n2`` of two further identities (``n1``, ``n2`` differ from each other and from ``a``)::

    relu(d(a, p) - d(a, n1) + margin1) + relu(d(a, p) - d(n1, n2) + margin2)

The first term is the triplet loss; the second asks every positive pair to be closer than a
negative pair that does not even involve the anchor, which shrinks intra-class and enlarges
inter-class variation globally (a "relative margin between all positive and negative pairs").
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.nn import functional as F

from ._checks import check_non_negative, resolve_distance
from .base import MetricLoss
from .combined import make_distance, register_loss
from .distances import Distance
from .triplet import BatchHardMiner


class NegativePairs(NamedTuple):
    """Per anchor, the hardest negative pair not involving the anchor's identity.

    Attributes:
        first: ``(B,)`` int64, index of ``n1'`` for every anchor.
        second: ``(B,)`` int64, index of ``n2'`` for every anchor.
        valid: ``(B,)`` bool, whether such a pair exists (the batch has two identities other
            than the anchor's); ``first``/``second`` are meaningless where it is ``False``.
    """

    first: Tensor
    second: Tensor
    valid: Tensor


def hardest_negative_pairs(distmat: Tensor, labels: Tensor) -> NegativePairs:
    """For every anchor, the closest pair ``(i, j)`` with ``labels[i] != labels[j]`` and neither
    label equal to the anchor's.

    Args:
        distmat: ``(B, B)`` symmetric distances, smaller is closer (detach it before mining).
        labels: ``(B,)`` integer identities.

    Returns:
        :class:`NegativePairs`; the pair depends only on the anchor's identity.

    Memory is ``O(P * B^2)`` for ``P`` identities in the batch.
    """
    batch = labels.shape[0]
    ids, inverse = labels.unique(return_inverse=True)  # (P,), (B,)
    different = labels[:, None] != labels[None, :]  # (B, B) pairs of two identities
    outside = labels[None, :] != ids[:, None]  # (P, B) sample not of identity p
    usable = different & outside[:, :, None] & outside[:, None, :]  # (P, B, B) over (p, i, j)
    masked = distmat.expand(len(ids), batch, batch).masked_fill(~usable, float("inf"))
    best = masked.flatten(1).argmin(dim=1)  # (P,) flat index i * B + j
    first, second = best // batch, best % batch  # (P,), (P,)
    valid = usable.flatten(1).any(dim=1)  # (P,)
    return NegativePairs(first[inverse], second[inverse], valid[inverse])


class QuadrupletLoss(MetricLoss):
    """Quadruplet loss on ``(B, D)`` features with in-batch hardest mining.

    Mining (on the detached distance matrix, smaller is closer):

    * first term: per anchor, the hardest positive (farthest same-identity sample) and hardest
      negative ``n1`` (closest other-identity sample), exactly as :class:`BatchHardMiner`;
    * second term: the same hardest positive, and the hardest negative pair ``(n1', n2')`` of the
      batch: the closest pair of two different identities, neither the anchor's (see
      :func:`hardest_negative_pairs`). Chen et al.'s margin-based online hard negative mining
      also takes the batch's hardest such pair; here each term takes its own hardest choice, so
      ``n1'`` need not be the first term's ``n1``.

    The loss is the mean of the first term over anchors with a positive and a negative, plus the
    mean of the second over anchors with a positive and a negative pair (each mean is 0 when it
    has no anchor; a batch of only two identities has no second term). With a PK batch of
    ``P >= 3`` identities both means run over every anchor. Without any valid anchor the loss is
    0 and still part of the autograd graph.

    Margins: Chen et al. adapt the margins per batch, ``alpha = w (mu_n - mu_p)`` with the mean
    negative- and positive-pair distances, ``w = 1`` for ``alpha1`` and ``w = 0.5`` for
    ``alpha2``. This class uses fixed margins; the defaults keep that 2 : 1 ratio at reidkit's
    triplet margin 0.3. Chen et al. also use a learned pair metric; any :class:`Distance` works
    here.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar.

    Args:
        margin1: ``alpha1 >= 0`` of the triplet term.
        margin2: ``alpha2 >= 0`` of the negative-pair term.
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.

    Raises:
        ValueError: a negative or non-finite margin.
        TypeError: ``distance`` is not a :class:`Distance`.
    """

    def __init__(
        self, margin1: float = 0.3, margin2: float = 0.15, distance: Distance | None = None
    ):
        super().__init__()
        check_non_negative(margin1=margin1, margin2=margin2)
        self.margin1, self.margin2 = float(margin1), float(margin2)
        self.distance = resolve_distance(distance)
        self.miner = BatchHardMiner()

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar loss."""
        distmat = self.distance(features)  # (B, B), smaller is closer
        anchor, pos, neg = self.miner.mine(distmat.detach(), labels)  # (T,) each
        pairs = hardest_negative_pairs(distmat.detach(), labels)
        d_ap = distmat[anchor, pos]  # (T,)
        first = F.relu(d_ap - distmat[anchor, neg] + self.margin1)  # (T,)
        keep = pairs.valid[anchor]  # (T,) anchors with a negative pair
        d_nn = distmat[pairs.first[anchor[keep]], pairs.second[anchor[keep]]]  # (T2,)
        second = F.relu(d_ap[keep] - d_nn + self.margin2)  # (T2,)
        return _mean_or_zero(first, distmat) + _mean_or_zero(second, distmat)

    def extra_repr(self) -> str:
        return f"margin1={self.margin1}, margin2={self.margin2}"


def _mean_or_zero(losses: Tensor, graph: Tensor) -> Tensor:
    """Mean of ``losses: (T,)``; 0 attached to ``graph``'s autograd graph when ``T == 0``."""
    return losses.mean() if losses.numel() else graph.sum() * 0.0


@register_loss("quadruplet")
def _quadruplet_from_config(
    margin1: float = 0.3, margin2: float = 0.15, distance: str = "euclidean"
) -> QuadrupletLoss:
    """:class:`QuadrupletLoss` with the distance given by name (see ``make_distance``)."""
    return QuadrupletLoss(margin1=margin1, margin2=margin2, distance=make_distance(distance))
