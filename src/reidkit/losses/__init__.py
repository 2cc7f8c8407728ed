"""ReID losses: classification, metric (triplet) and a weighted combination.

Losses take tensors: ``CrossEntropyLoss()(logits (B, K), labels (B,))`` and
``TripletLoss()(features (B, D), labels (B,))``. :class:`CombinedLoss` takes a model's
:class:`reidkit.models.ReIDOutput` and routes each loss to ``logits`` or ``feature`` by the loss's
``input`` attribute; :func:`build_loss` builds one from config data.
"""

from .base import ClassificationLoss, MetricLoss, ReIDLoss
from .combined import CombinedLoss, LossResult, build_loss, list_losses, register_loss
from .cross_entropy import CrossEntropyLoss
from .distances import CosineDistance, Distance, EuclideanDistance
from .triplet import (
    BatchAllMiner,
    BatchHardMiner,
    TripletLoss,
    TripletMiner,
    Triplets,
    pair_masks,
)

__all__ = [
    "BatchAllMiner",
    "BatchHardMiner",
    "ClassificationLoss",
    "CombinedLoss",
    "CosineDistance",
    "CrossEntropyLoss",
    "Distance",
    "EuclideanDistance",
    "LossResult",
    "MetricLoss",
    "ReIDLoss",
    "TripletLoss",
    "TripletMiner",
    "Triplets",
    "build_loss",
    "list_losses",
    "pair_masks",
    "register_loss",
]
