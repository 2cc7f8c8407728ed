"""Semi-hard negative mining for :class:`reidkit.losses.TripletLoss` (FaceNet).

Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and
Clustering", CVPR 2015, section 3.2: for an anchor-positive pair, prefer negatives that are
farther from the anchor than the positive yet still violate the margin; the hardest negatives
(closer than the positive) can collapse the model early in training.
"""

from __future__ import annotations

from torch import Tensor

from .triplet import TripletMiner, Triplets, pair_masks


class SemiHardMiner(TripletMiner):
    """One triplet per anchor-positive pair, with the closest negative farther than the positive.

    Every ordered pair ``(a, p)`` of distinct same-identity samples is considered. Its negative is
    the other-identity sample ``n`` closest to the anchor among those with ``d(a, p) < d(a, n)``
    (strictly; distances are smaller-is-closer). The triplet has a non-zero hard-margin loss only
    when ``d(a, n) < d(a, p) + margin`` (FaceNet's semi-hard band); a zero-loss triplet still counts
    in the mean. A pair without any negative farther than its positive is **skipped** (TensorFlow's
    ``triplet_semihard_loss`` would instead fall back to the farthest negative). The loss is the
    mean over the kept pairs (:meth:`TripletMiner.reduce`).

    Memory is ``O(P * B)`` for ``P`` positive pairs (at most ``B^2``).
    """

    def mine(self, distmat: Tensor, labels: Tensor) -> Triplets:
        """Pick the semi-hard negative of every anchor-positive pair.

        Args:
            distmat: ``(B, B)`` detached distances, smaller is closer.
            labels: ``(B,)`` integer identities.

        Returns:
            :class:`Triplets` of ``(T,)`` int64 indices, one per kept pair (``T`` may be 0).
        """
        positive, negative = pair_masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)  # (P,), (P,)
        rows = distmat[anchor]  # (P, B): each pair's anchor against the whole batch
        farther = negative[anchor] & (rows > distmat[anchor, pos][:, None])  # (P, B)
        neg = rows.masked_fill(~farther, float("inf")).argmin(dim=1)  # (P,)
        keep = farther.any(dim=1)  # (P,)
        return Triplets(anchor[keep], pos[keep], neg[keep])
