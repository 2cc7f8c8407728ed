"""MSP-CNN's base network (Chen et al., "Multi-Level Similarity Perception Network for Person
Re-Identification", ACM MM 2017).

MSP-CNN builds its base net "after" Xiao et al., "Learning Deep Feature Representations with
Domain Guided Dropout for Person Re-identification" (CVPR 2016): 3 conv modules, 6 Inception
modules whose 5x5 branch is two 3x3 convs, and an FC module. MSP-CNN's Table 1 (the exact widths)
is not in our source, so the widths are read from Xiao et al.'s JSTL network (their released Caffe
model definition), which already has these properties::

    input                                  3 x 144 x 56
    conv1-3     3x3 conv 32, BN, ReLU     32 x 144 x 56
    pool1       2x2 max pool, stride 2    32 x 72 x 28     feature_maps[0] (low-level NCC loss)
    inception 1a   branches of width 64  256 x 72 x 28
    inception 1b   stride 2, width 64    384 x 36 x 14     feature_maps[1]
    inception 2a   width 128             512 x 36 x 14
    inception 2b   stride 2, width 128   768 x 18 x 7      feature_maps[2]
    inception 3a   width 256            1024 x 18 x 7
    inception 3b   stride 2, width 256  1536 x 9 x 4       feature_maps[3]
    global average pool                 1536
    fc7         FC 256, BN, ReLU (dropout 0.5 before the classifier)
    fc8         FC over the training identities

An "a" module (:class:`InceptionA`) concatenates four branches of equal width w: 1x1; 1x1 -> 3x3;
1x1 -> 3x3 -> 3x3 (the factorised 5x5); 3x3 average pool -> 1x1. A "b" module
(:class:`InceptionB`) halves H and W: 1x1 -> 3x3/2; 1x1 -> 3x3 -> 3x3/2; 3x3/2 max pool of the
input (channels passed through), so it outputs 2w + C_in channels. Every convolution is followed
by BN and ReLU. Stride 2 rounds up (odd sizes: 7 -> 4), as in the Caffe model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from . import register_model
from .base import Backbone, ReIDModel


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias, "same" padding) -> BN -> ReLU."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class InceptionA(nn.Module):
    """Inception "a" module with the 5x5 branch factorised into two 3x3 convs (Szegedy et al.,
    "Rethinking the Inception Architecture", CVPR 2016), as in Xiao et al.'s JSTL net.

    Args:
        in_channels: C_in.
        width: w, the output channels of every branch (and of its 1x1 reductions).

    Shapes:
        ``(B, C_in, H, W) -> (B, 4w, H, W)``.
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.branch1x1 = _conv_bn_relu(in_channels, width, 1)
        self.branch3x3 = nn.Sequential(
            _conv_bn_relu(in_channels, width, 1), _conv_bn_relu(width, width)
        )
        self.branch_double3x3 = nn.Sequential(
            _conv_bn_relu(in_channels, width, 1),
            _conv_bn_relu(width, width),
            _conv_bn_relu(width, width),
        )
        self.branch_pool = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1), _conv_bn_relu(in_channels, width, 1)
        )
        self.out_channels = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch_double3x3, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)  # (B, 4w, H, W)


class InceptionB(nn.Module):
    """Stride-2 Inception "b" module (grid reduction), as in Xiao et al.'s JSTL net.

    Args:
        in_channels: C_in.
        width: w, the output channels of the two conv branches.

    Shapes:
        ``(B, C_in, H, W) -> (B, 2w + C_in, ceil(H / 2), ceil(W / 2))``.
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.branch3x3 = nn.Sequential(
            _conv_bn_relu(in_channels, width, 1), _conv_bn_relu(width, width, stride=2)
        )
        self.branch_double3x3 = nn.Sequential(
            _conv_bn_relu(in_channels, width, 1),
            _conv_bn_relu(width, width),
            _conv_bn_relu(width, width, stride=2),
        )
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = 2 * width + in_channels

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch3x3, self.branch_double3x3, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)  # (B, 2w + C_in, H/2, W/2)


class MSPBackbone(Backbone):
    """MSP-CNN's conv + Inception trunk (see the module docstring for the layout).

    Returns four stage outputs: pool1 (the map MSP-CNN's low-level NCC loss acts on), then the
    outputs of Inception 1b, 2b and 3b (strides 2, 4, 8, 16).

    Args:
        stem_channels: channels of conv1-3 (32 in the paper).
        widths: branch widths of Inception 1x, 2x and 3x (64, 128, 256 in Xiao et al.).

    Shapes:
        ``x: (B, 3, H, W)`` -> ``[(B, 32, H/2, W/2), (B, 384, H/4, W/4), (B, 768, H/8, W/8),
        (B, 1536, H/16, W/16)]`` (sizes rounded up; 72 x 28, 36 x 14, 18 x 7, 9 x 4 at 144 x 56).
    """

    def __init__(self, stem_channels: int = 32, widths: tuple[int, int, int] = (64, 128, 256)):
        super().__init__()
        c = stem_channels
        self.stem = nn.Sequential(
            _conv_bn_relu(3, c), _conv_bn_relu(c, c), _conv_bn_relu(c, c), nn.MaxPool2d(2, 2)
        )
        self.out_channels = [c]
        self.stages = nn.ModuleList()
        for width in widths:
            block_a = InceptionA(c, width)
            block_b = InceptionB(block_a.out_channels, width)
            self.stages.append(nn.Sequential(block_a, block_b))
            c = block_b.out_channels
            self.out_channels.append(c)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x: (B, 3, H, W)`` -> the four stage outputs, shallow to deep (class docstring)."""
        x = self.stem(x)  # (B, 32, H/2, W/2) pool1
        outs = [x]
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class MSPHead(nn.Module):
    """MSP-CNN's FC module and classifier: fc7 = ReLU(BN(FC(pooled))), logits = fc8(dropout(fc7)).

    ``feature`` and ``embedding`` are both fc7 *before* dropout, so the fc7 similarity loss and
    inference see the same deterministic feature; dropout (Caffe's in-place ``drop7``) regularises
    the classifier only.

    Args:
        in_dim: pooled feature size C.
        num_classes: training identities; 0 for no classifier.
        dim: D, the fc7 size (256 in the paper).
        dropout: dropout probability before the classifier (0.5 in Xiao et al.'s model).
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 256, dropout: float = 0.5):
        super().__init__()
        self.out_dim = dim
        self.fc7 = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None
        self.apply(init_weights)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)  # as Xiao et al.'s fc8

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``pooled: (B, C)`` -> ``(feature (B, D), embedding (B, D), logits (B, K) or None)``."""
        f = self.fc7(pooled)  # (B, D) fc7
        logits = self.classifier(self.dropout(f)) if self.classifier is not None else None
        return f, f, logits


def init_weights(m: nn.Module) -> None:
    """Xavier (Glorot) uniform weights and zero biases for convs and FCs, as Xiao et al.'s Caffe
    model; BN weight 1 and bias 0. For ``module.apply``."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@register_model
def mspcnn(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    embedding_dim: int = 256,
    dropout: float = 0.5,
    **kwargs,
) -> ReIDModel:
    """MSP-CNN's base net (Chen et al., ACM MM 2017), trained from scratch; input 144 x 56.

    ``forward_train(x).feature_maps[0]`` is pool1 ``(B, 32, H/2, W/2)`` for the low-level NCC
    loss (:class:`reidkit.losses.ncc.NCCLoss`); ``feature`` = ``embedding`` = fc7 ``(B, D)``
    (compare with Euclidean distance on L2-normalised vectors, smaller is closer).

    Args:
        num_classes: training identities for the classifier; 0 builds no classifier.
        pretrained: ``None`` (random init) or the path of a local state dict of a whole
            :class:`ReIDModel` or of the backbone (``backbone.`` prefixes are accepted);
            ``True`` raises: no ImageNet weights exist for this net.
        embedding_dim: D, the fc7 size (256).
        dropout: dropout probability before the classifier.
        **kwargs: passed to :class:`MSPBackbone` (``stem_channels``, ``widths``).

    Raises:
        ValueError: ``pretrained=True``.
    """
    if pretrained is True:
        raise ValueError("pretrained=True: MSP-CNN is trained from scratch; pass a local path")
    backbone = MSPBackbone(**kwargs)
    if pretrained:
        _load_backbone(backbone, pretrained)
    head = MSPHead(backbone.out_channels[-1], num_classes, dim=embedding_dim, dropout=dropout)
    return ReIDModel(backbone, head)


def _load_backbone(backbone: MSPBackbone, path: str | Path) -> None:
    """Load the backbone tensors of a local weights file through reidkit's one safe loader
    (:func:`reidkit.models.pretrained.load_state_dict_file`: ``weights_only``, prefixes
    stripped, strict unless ``path`` is a ``WeightsFile(path, strict=False)``).

    Raises:
        WeightsError: the file is unreadable, unsafe, or its tensors do not fit the backbone.
    """
    from .pretrained import load_state_dict_file

    load_state_dict_file(backbone, path)
