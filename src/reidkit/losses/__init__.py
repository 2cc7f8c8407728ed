"""ReID losses: classification, metric (triplet) and a weighted combination.

Losses take tensors: ``CrossEntropyLoss()(logits (B, K), labels (B,))`` and
``TripletLoss()(features (B, D), labels (B,))``. The metric family (seed 004): contrastive,
triplet with batch-hard / batch-all / semi-hard mining, improved triplet, quadruplet, soft
hard-mining triplet and margin sample mining. :class:`CombinedLoss` takes a model's
:class:`reidkit.models.ReIDOutput` and routes each loss to ``logits`` or ``feature`` by the loss's
``input`` attribute; :func:`build_loss` builds one from config data.
"""

from .aligned import LocalTripletLoss, local_distance, shortest_path
from .base import ClassificationLoss, MetricLoss, ReIDLoss
from .combined import (
    CombinedLoss,
    LossResult,
    build_loss,
    list_losses,
    make_distance,
    make_miner,
    register_loss,
)
from .contrastive import ContrastiveLoss
from .cross_entropy import CrossEntropyLoss
from .distances import CosineDistance, Distance, EuclideanDistance
from .improved_triplet import ImprovedTripletLoss
from .margin_sample_mining import MarginSampleMiningLoss
from .ncc import NCCLoss, ncc_best_match
from .quadruplet import NegativePairs, QuadrupletLoss, hardest_negative_pairs
from .semi_hard import SemiHardMiner
from .soft_hard_triplet import SoftHardTripletLoss
from .triplet import (
    BatchAllMiner,
    BatchHardMiner,
    TripletLoss,
    TripletMiner,
    Triplets,
    pair_masks,
)

__all__ = [
    "NCCLoss",
    "ncc_best_match",
    "LocalTripletLoss",
    "local_distance",
    "shortest_path",
    "BatchAllMiner",
    "BatchHardMiner",
    "ClassificationLoss",
    "CombinedLoss",
    "ContrastiveLoss",
    "CosineDistance",
    "CrossEntropyLoss",
    "Distance",
    "EuclideanDistance",
    "ImprovedTripletLoss",
    "LossResult",
    "MarginSampleMiningLoss",
    "MetricLoss",
    "NegativePairs",
    "QuadrupletLoss",
    "ReIDLoss",
    "SemiHardMiner",
    "SoftHardTripletLoss",
    "TripletLoss",
    "TripletMiner",
    "Triplets",
    "build_loss",
    "hardest_negative_pairs",
    "list_losses",
    "make_distance",
    "make_miner",
    "pair_masks",
    "register_loss",
]
