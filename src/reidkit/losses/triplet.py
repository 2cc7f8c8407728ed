"""Triplet loss with pluggable distances and miners.

A triplet ``(a, p, n)`` is an anchor, a positive (same identity, another sample) and a negative
(another identity). The loss pushes ``d(a, p)`` below ``d(a, n)``:

* hard margin: ``relu(d(a, p) - d(a, n) + margin)``;
* soft margin: ``softplus(d(a, p) - d(a, n)) = log(1 + exp(d(a, p) - d(a, n)))``
  (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017).

**Miner interface.** A miner is a :class:`TripletMiner`: ``mine(distmat, labels)`` takes the
detached ``(B, B)`` distance matrix (smaller is closer) and ``(B,)`` labels and returns
:class:`Triplets`, three ``(T,)`` int64 index tensors into the batch; ``reduce(losses)`` turns the
``(T,)`` per-triplet losses into a scalar (mean by default). Index triplets cover every strategy:
batch-hard yields one triplet per anchor, batch-all every valid triplet, semi-hard one per
anchor-positive pair. The loss gathers ``distmat[a, p]`` and ``distmat[a, n]`` from the
differentiable matrix, so gradients flow only through the chosen pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import MetricLoss
from .distances import Distance, EuclideanDistance


class Triplets(NamedTuple):
    """Triplets chosen by a miner: ``anchor``, ``positive``, ``negative``, each ``(T,)`` int64."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks of a batch.

    Args:
        labels: ``(B,)`` integer identities.

    Returns:
        ``(positive, negative)``, each ``(B, B)`` bool: ``positive[i, j]`` = same identity and
        ``i != j``; ``negative[i, j]`` = different identity.
    """
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class TripletMiner:
    """Base class of triplet miners (see the module docstring for the interface).

    Subclasses implement :meth:`mine`; they may override :meth:`reduce`.
    """

    def mine(self, distmat: Tensor, labels: Tensor) -> Triplets:  # pragma: no cover - abstract
        """``distmat: (B, B)`` detached distances (smaller is closer), ``labels: (B,)`` integer
        -> :class:`Triplets` of ``(T,)`` int64 indices (``T`` may be 0)."""
        raise NotImplementedError

    def reduce(self, losses: Tensor) -> Tensor:
        """``losses: (T,)`` per-triplet losses, ``T >= 1`` -> scalar (their mean)."""
        return losses.mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BatchHardMiner(TripletMiner):
    """Batch-hard mining (Hermans et al. 2017).

    For each anchor: the hardest positive (the same-identity sample at maximum distance) and the
    hardest negative (the other-identity sample at minimum distance): one triplet per anchor.
    Anchors without a positive (singleton identity in the batch) or without a negative are
    skipped. The loss is the mean over the remaining anchors.
    """

    def mine(self, distmat: Tensor, labels: Tensor) -> Triplets:
        """``distmat: (B, B)``, ``labels: (B,)`` -> one triplet per valid anchor."""
        positive, negative = pair_masks(labels)
        hardest_pos = distmat.masked_fill(~positive, float("-inf")).argmax(dim=1)  # (B,)
        hardest_neg = distmat.masked_fill(~negative, float("inf")).argmin(dim=1)  # (B,)
        anchor = (positive.any(dim=1) & negative.any(dim=1)).nonzero().squeeze(1)  # (T,)
        return Triplets(anchor, hardest_pos[anchor], hardest_neg[anchor])


class BatchAllMiner(TripletMiner):
    """Batch-all mining: every valid triplet of the batch (Hermans et al. 2017, "batch all").

    Most triplets of a trained model already satisfy the margin and have zero loss; averaging
    over all of them shrinks the loss as training proceeds. Hermans et al. therefore average over
    the triplets with positive loss only ("BA≠0"), the default here.

    Memory is ``O(B^3)`` booleans.

    Args:
        average: ``"nonzero"`` (mean over triplets with loss > 0; 0 when there is none) or
            ``"all"`` (mean over all valid triplets). With the soft margin every loss is positive
            and the two agree.

    Raises:
        ValueError: unknown ``average``.
    """

    def __init__(self, average: str = "nonzero"):
        if average not in ("nonzero", "all"):
            raise ValueError(f"average must be 'nonzero' or 'all', got {average!r}")
        self.average = average

    def mine(self, distmat: Tensor, labels: Tensor) -> Triplets:
        """``distmat: (B, B)``, ``labels: (B,)`` -> every ``(a, p, n)`` with valid ``p``, ``n``."""
        positive, negative = pair_masks(labels)
        valid = positive[:, :, None] & negative[:, None, :]  # (B, B, B) over (a, p, n)
        return Triplets(*valid.nonzero(as_tuple=True))

    def reduce(self, losses: Tensor) -> Tensor:
        """``losses: (T,)`` -> mean over all, or over the positive ones (see ``average``)."""
        if self.average == "all":
            return losses.mean()
        active = losses[losses > 0]
        return active.mean() if active.numel() else losses.sum() * 0.0

    def __repr__(self) -> str:
        return f"BatchAllMiner(average={self.average!r})"


class TripletLoss(MetricLoss):
    """Triplet loss on ``(B, D)`` features with a distance and a miner as objects.

    ``loss = reduce_t(relu(d(a_t, p_t) - d(a_t, n_t) + margin))`` over the miner's triplets, or
    ``softplus(d(a_t, p_t) - d(a_t, n_t))`` with ``soft_margin=True`` (Hermans et al. 2017; the
    triplet loss itself: Schroff et al., "FaceNet", CVPR 2015). ``reduce`` is the miner's
    (mean over anchors for batch-hard). If the batch has no valid triplet (no identity with two
    samples, or a single identity) the loss is ``0`` and still part of the autograd graph, so
    ``backward()`` works and gives zero gradients.

    Call as ``loss(features, labels)`` with ``features: (B, D)`` float, ``B >= 2`` and
    ``labels: (B,)`` integer; returns a scalar. Bad shapes or dtypes raise ``ValueError``.

    Args:
        margin: ``alpha >= 0`` of the hard margin (not used with ``soft_margin=True``).
        distance: a :class:`Distance` (smaller is closer); ``EuclideanDistance()`` when ``None``.
        mining: a :class:`TripletMiner`; ``BatchHardMiner()`` when ``None``.
        soft_margin: use ``softplus(d_ap - d_an)`` instead of the hard margin.

    Raises:
        ValueError: negative ``margin``.
        TypeError: ``distance`` is not a ``Distance`` or ``mining`` not a ``TripletMiner``.
    """

    def __init__(
        self,
        margin: float = 0.3,
        distance: Distance | None = None,
        mining: TripletMiner | None = None,
        soft_margin: bool = False,
    ):
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        distance = EuclideanDistance() if distance is None else distance
        mining = BatchHardMiner() if mining is None else mining
        if not isinstance(distance, Distance):
            raise TypeError(f"distance must be a Distance, got {type(distance).__name__}")
        if not isinstance(mining, TripletMiner):
            raise TypeError(f"mining must be a TripletMiner, got {type(mining).__name__}")
        self.margin, self.soft_margin = float(margin), bool(soft_margin)
        self.distance, self.mining = distance, mining

    def compute(self, features: Tensor, labels: Tensor) -> Tensor:
        """``features: (B, D)``, ``labels: (B,)`` (validated) -> scalar loss."""
        distmat = self.distance(features)  # (B, B), smaller is closer
        anchor, pos, neg = self.mining.mine(distmat.detach(), labels)
        if anchor.numel() == 0:
            return distmat.sum() * 0.0  # no valid triplet: zero, but backward() still works
        gap = distmat[anchor, pos] - distmat[anchor, neg]  # (T,) d_ap - d_an
        losses = F.softplus(gap) if self.soft_margin else F.relu(gap + self.margin)
        return self.mining.reduce(losses)

    def extra_repr(self) -> str:
        margin = "soft_margin=True" if self.soft_margin else f"margin={self.margin}"
        return f"{margin}, mining={self.mining!r}"
