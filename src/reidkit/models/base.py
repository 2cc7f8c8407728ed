"""The model contract shared by every reidkit model.

Every model is a :class:`ReIDModel`: a *backbone* that returns its stage outputs, global average
pooling of the last stage, and a *head* that maps the pooled vector to an embedding and, when the
model has a classifier, identity logits.

* ``model(x)`` with ``x: (B, 3, H, W)`` float returns the ``(B, D)`` embedding, in train and eval
  mode alike (compare embeddings with Euclidean or cosine distance, smaller is closer).
* ``model.forward_train(x)`` returns a :class:`ReIDOutput` named tuple for training code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ReIDOutput(NamedTuple):
    """What training code gets from :meth:`ReIDModel.forward_train`.

    Attributes:
        embedding: ``(B, D)`` the embedding used at inference (after BNNeck's BN, if any).
        feature: ``(B, D')`` the feature metric losses (triplet, ...) act on; for BNNeck the
            pooled feature before the BN (Luo et al., "Bag of Tricks", 2019), otherwise equal to
            ``embedding``.
        logits: ``(B, num_classes)`` identity logits, or ``None`` for a model without classifier.
        feature_maps: stage outputs of the backbone, shallow to deep, each ``(B, C_s, H_s, W_s)``.
        local_feature: ``(B, S, C_l)`` part features (e.g. AlignedReID's horizontal stripes),
            or ``None`` for models without a local branch.
    """

    embedding: Tensor
    feature: Tensor
    logits: Tensor | None
    feature_maps: tuple[Tensor, ...]
    local_feature: Tensor | None = None


class Backbone(nn.Module):
    """A feature extractor that returns its stage outputs.

    Subclasses set ``out_channels`` (channels of each stage output, shallow to deep) and implement
    :meth:`forward` returning a list of ``(B, C_s, H_s, W_s)`` tensors, one per stage.
    """

    out_channels: list[int]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class BNNeckHead(nn.Module):
    """BNNeck (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person ReID", CVPRW 2019).

    ``feature`` = pooled vector (for the triplet loss); ``embedding`` = BatchNorm1d(feature) with a
    frozen bias (for the bias-free classifier and for inference).

    Args:
        in_dim: pooled feature size C.
        num_classes: training identities; 0 for no classifier.
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.out_dim = in_dim
        self.bn = nn.BatchNorm1d(in_dim)
        self.bn.bias.requires_grad_(False)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``pooled: (B, C)`` -> ``(feature (B, C), embedding (B, C), logits (B, K) or None)``."""
        embedding = self.bn(pooled)
        logits = self.classifier(embedding) if self.classifier is not None else None
        return pooled, embedding, logits


class EmbeddingHead(nn.Module):
    """A learned embedding layer and a classifier.

    ``order="bn_fc_relu"``: BN -> FC(dim) -> ReLU, the AMSFL baseline head (seed 000);
    ``order="fc_bn_relu"``: FC(dim) -> BN -> ReLU, OSNet's head (Zhou et al., ICCV 2019).
    ``feature`` and ``embedding`` are the same ``(B, dim)`` tensor.

    Args:
        in_dim: pooled feature size C.
        num_classes: training identities; 0 for no classifier.
        dim: embedding size D.
        order: ``"bn_fc_relu"`` or ``"fc_bn_relu"``.

    Raises:
        ValueError: unknown ``order``.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 512, order: str = "bn_fc_relu"):
        super().__init__()
        if order == "bn_fc_relu":
            layers = [nn.BatchNorm1d(in_dim), nn.Linear(in_dim, dim), nn.ReLU(inplace=True)]
        elif order == "fc_bn_relu":
            layers = [nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        else:
            raise ValueError(f"order must be 'bn_fc_relu' or 'fc_bn_relu', got {order!r}")
        self.out_dim = dim
        self.embed = nn.Sequential(*layers)
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``pooled: (B, C)`` -> ``(feature (B, D), embedding (B, D), logits (B, K) or None)``."""
        f = self.embed(pooled)
        logits = self.classifier(f) if self.classifier is not None else None
        return f, f, logits


def build_head(kind: str, in_dim: int, num_classes: int, dim: int = 512) -> nn.Module:
    """Head by name: ``"bnneck"``, ``"bn_fc_relu"`` or ``"fc_bn_relu"``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "bnneck":
        return BNNeckHead(in_dim, num_classes)
    if kind in ("bn_fc_relu", "fc_bn_relu"):
        return EmbeddingHead(in_dim, num_classes, dim=dim, order=kind)
    raise ValueError(f"head must be 'bnneck', 'bn_fc_relu' or 'fc_bn_relu', got {kind!r}")


class ReIDModel(nn.Module):
    """Backbone -> global average pool of the last stage -> head.

    Args:
        backbone: a :class:`Backbone`.
        head: a head module mapping ``(B, C_last)`` to ``(feature, embedding, logits)``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def embedding_dim(self) -> int:
        """D, the size of the embedding ``model(x)`` returns."""
        return self.head.out_dim

    @property
    def num_classes(self) -> int:
        clf = getattr(self.head, "classifier", None)
        return 0 if clf is None else clf.out_features

    def forward_train(self, x: Tensor) -> ReIDOutput:
        """``x: (B, 3, H, W)`` -> :class:`ReIDOutput` (embedding, feature, logits, stage maps)."""
        maps = self.backbone(x)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(maps[-1], 1), 1)  # (B, C)
        feature, embedding, logits = self.head(pooled)
        return ReIDOutput(embedding, feature, logits, tuple(maps))

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> embedding ``(B, D)`` float."""
        return self.forward_train(x).embedding
