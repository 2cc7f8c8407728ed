"""Improved triplet loss: a triplet loss plus an absolute bound on positive distances.

Cheng, Gong, Zhou, Wang, Zheng, "Person Re-Identification by Multi-Channel Parts-Based CNN with
Improved Triplet Loss Function", CVPR 2016. The triplet loss only orders ``d(a, p)`` against
``d(a, n)``; the added term also pulls same-identity pairs below an absolute distance ``tau``.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from ._checks import check_non_negative
from .base import MetricLoss
from .combined import make_distance, make_miner, register_loss
from .distances import Distance
from .triplet import TripletLoss, TripletMiner


class ImprovedTripletLoss(MetricLoss):
    """``TripletLoss + beta * mean_t relu(d(a_t, p_t) - tau)`` over the miner's triplets.

    The first term is exactly :class:`TripletLoss` (hard margin, same distance and miner, reduced
    by the miner). The second is averaged over the same mined triplets ``t``, as Cheng et al. add
    both terms per triplet: with batch-hard mining that is the hardest positive of each anchor.
    Distances are smaller-is-closer. Cheng et al. write ``max(d_ap, tau)``, which equals
    ``tau + relu(d_ap - tau)``: the same gradient. They use squared Euclidean distances with
    margin 1 (``tau_1 = -1``), ``tau_2 = 0.01`` and ``beta = 0.002``; the defaults here keep their
    ``beta`` and ``tau`` and reidkit's triplet margin 0.3. Without a valid triplet the loss is 0
    and still part of the autograd graph.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar.

    Args:
        margin: triplet margin ``alpha >= 0``.
        beta: weight ``>= 0`` of the positive-distance term.
        tau: absolute bound ``>= 0`` on positive distances (same unit as the distance).
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.
        mining: a :class:`TripletMiner`; ``BatchHardMiner()`` when ``None``.

    Raises:
        ValueError: a negative or non-finite ``margin``, ``beta`` or ``tau``.
        TypeError: ``distance`` or ``mining`` of the wrong type.
    """

    def __init__(
        self,
        margin: float = 0.3,
        beta: float = 0.002,
        tau: float = 0.01,
        distance: Distance | None = None,
        mining: TripletMiner | None = None,
    ):
        super().__init__()
        check_non_negative(margin=margin, beta=beta, tau=tau)
        self.triplet = TripletLoss(margin=margin, distance=distance, mining=mining)
        self.beta, self.tau = float(beta), float(tau)

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar loss."""
        triplet = self.triplet(features, labels)
        # TripletLoss keeps its distance matrix internal: recompute it (O(B^2 D)) and re-mine.
        distmat = self.triplet.distance(features)  # (B, B), smaller is closer
        anchor, pos, _ = self.triplet.mining.mine(distmat.detach(), labels)
        if anchor.numel() == 0:
            return triplet  # already 0 and in the graph
        pull = F.relu(distmat[anchor, pos] - self.tau).mean()  # mean over the mined triplets
        return triplet + self.beta * pull

    def extra_repr(self) -> str:
        return f"beta={self.beta}, tau={self.tau}"


@register_loss("improved_triplet")
def _improved_triplet_from_config(
    margin: float = 0.3,
    beta: float = 0.002,
    tau: float = 0.01,
    distance: str = "euclidean",
    mining: str = "batch_hard",
) -> ImprovedTripletLoss:
    """:class:`ImprovedTripletLoss` with distance and miner given by name."""
    return ImprovedTripletLoss(
        margin=margin,
        beta=beta,
        tau=tau,
        distance=make_distance(distance),
        mining=make_miner(mining),
    )
