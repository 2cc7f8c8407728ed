"""Contrastive (pairwise) loss: pull same-identity pairs together, push others beyond a margin.

Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
In ReID: Varior et al., "Gated Siamese Convolutional Neural Network Architecture for Human
Re-Identification", ECCV 2016 (cited by the Megvii talk, seed 004), and the Euclidean fc7 loss of
MSP-CNN (Chen et al., ACM MM 2017), which trains on Siamese pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._checks import check_non_negative, resolve_distance
from .base import MetricLoss
from .combined import make_distance, register_loss
from .distances import Distance

PAIRINGS = ("all", "adjacent")


class ContrastiveLoss(MetricLoss):
    """Contrastive loss over pairs of ``(B, D)`` features.

    For a pair ``(i, j)`` with distance ``d = d(x_i, x_j)`` (smaller is closer) and ``y = 1`` when
    ``labels[i] == labels[j]``, else ``0``::

        l(i, j) = y * d^2 + (1 - y) * relu(margin - d)^2

    Positive pairs are always pulled together; negative pairs are pushed only while closer than
    ``margin``. Hadsell et al. put a factor 1/2 on both terms; it is left out here (as in the
    talk), which only rescales the loss. The loss is the **plain mean of** ``l`` **over all
    pairs** (not separate means over positive and negative pairs, so in a PK batch the many
    negative pairs carry proportionally more weight). Use a non-squared distance: with
    ``EuclideanDistance(squared=True)`` the positive term becomes ``||x_i - x_j||^4``.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar.

    Args:
        margin: ``alpha >= 0``; negative pairs farther than this cost nothing. The default 1.0
            suits L2-normalised features (Euclidean distances in ``[0, 2]``), as in MSP-CNN.
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.
        pairs: ``"all"``: every unordered pair ``i < j`` of the batch, ``B (B - 1) / 2`` pairs
            (for PK batches). ``"adjacent"``: the batch is a sequence of Siamese pairs ``(0, 1),
            (2, 3), ...`` as a pair sampler produces, ``B / 2`` pairs; ``B`` must be even.

    Raises:
        ValueError: negative or non-finite ``margin``, unknown ``pairs``; at call time, an odd
            batch with ``pairs="adjacent"`` or bad shapes (see :meth:`MetricLoss.forward`).
        TypeError: ``distance`` is not a :class:`Distance`.
    """

    def __init__(self, margin: float = 1.0, distance: Distance | None = None, pairs: str = "all"):
        super().__init__()
        check_non_negative(margin=margin)
        if pairs not in PAIRINGS:
            raise ValueError(f"pairs must be one of {PAIRINGS}, got {pairs!r}")
        self.margin, self.pairs = float(margin), pairs
        self.required_layout = "pairs" if pairs == "adjacent" else None
        self.distance = resolve_distance(distance)

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar mean over the pairs."""
        first, second = self.pair_indices(features.shape[0], features.device)  # (N,), (N,)
        d = self.distance(features)[first, second]  # (N,) pair distances, smaller is closer
        same = (labels[first] == labels[second]).to(d.dtype)  # (N,) y
        losses = same * d.pow(2) + (1.0 - same) * F.relu(self.margin - d).pow(2)  # (N,)
        return losses.mean()

    def pair_indices(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The ``(N,)`` int64 indices ``(first, second)`` of the pairs this loss compares.

        Raises:
            ValueError: ``pairs="adjacent"`` and ``batch_size`` is odd.
        """
        if self.pairs == "all":
            first, second = torch.triu_indices(batch_size, batch_size, offset=1, device=device)
            return first, second
        if batch_size % 2:
            raise ValueError(
                f"pairs='adjacent' needs an even batch of Siamese pairs (0, 1), (2, 3), ..., "
                f"got features with B={batch_size}"
            )
        starts = torch.arange(0, batch_size, 2, device=device)  # (B/2,)
        return starts, starts + 1

    def extra_repr(self) -> str:
        return f"margin={self.margin}, pairs={self.pairs!r}"


@register_loss("contrastive")
def _contrastive_from_config(
    margin: float = 1.0, distance: str = "euclidean", pairs: str = "all"
) -> ContrastiveLoss:
    """:class:`ContrastiveLoss` with the distance given by name (see ``make_distance``)."""
    return ContrastiveLoss(margin=margin, distance=make_distance(distance), pairs=pairs)
