"""Multi-scale feature learning (MSFL) of AMSFL: CSIP pyramid + MSFF fusion on any backbone.

Paper: X. Wang et al., "Adversarial Multi-scale Feature Learning for Person Re-identification",
arXiv:2012.14061, 2020 (seed 000), Sec. III-A. The regulariser of the same paper (MSGR) is
:func:`reidkit.engine.msgr.msgr_penalty`; it needs the backbone's stage outputs, which
:meth:`MSFLModel.forward_train` returns in ``feature_maps``.

Data flow for the default ``levels=(1, 2, 3, 4)`` on ResNet-50 at 256x128::

    C2..C5   backbone stage outputs (256/512/1024/2048 ch; 64x32, 32x16, 16x8, 8x4)
    CSIP     lateral 1x1 conv to 512 ch; top-down: nearest upsample to the finer map + add;
             3x3 conv per level -> P2..P5 (512 ch, same sizes)
    MSFF     3/2/1/0 extra ResNet bottleneck blocks on P2/P3/P4/P5; global average pool each;
             concatenate -> (B, 4 * 512)
    head     BN -> FC(512) -> ReLU (the AMSFL baseline head) -> classifier

Reading of the paper (its extracted text lost the level labels and the ablation's headers):

* Levels: the paper excludes "conv1" from the pyramid. We read its stages as ResNet's conv2..conv5
  (torchvision ``layer1..layer4``), so the pyramid is P2..P5, all four stage outputs; ``levels``
  selects any subset (1-based stage numbers, the numbering MSGR's ``stages`` uses).
* Extra blocks: "3, 2 and 1 bottleneck blocks respectively", finest level first; with four levels
  the top level gets none (``extra_blocks=(3, 2, 1, 0)``). A block is torchvision's ResNet
  ``Bottleneck`` at the pyramid width (``neck_dim -> neck_dim / 4 -> neck_dim``).
* The anti-aliasing 3x3 conv is applied to every level, the top included (as in FPN), and the
  top-down path carries the merged map before that conv (also as in FPN). Lateral and 3x3 convs
  have a bias and no BN or ReLU (FPN); the bottleneck blocks bring their own BN.
* Upsampling uses ``size=`` of the finer map, not a factor 2, so backbones whose last two stages
  share a stride (OSNet's conv4/conv5, ResNet with ``last_stride=1``) work unchanged.

Size: with this reading ``resnet50_msfl`` (no classifier) has 37.65 M parameters, against the
paper's 27 M (baseline 24.56 M, which :func:`reidkit.models.resnet.resnet50` with the
``bn_fc_relu`` head reproduces exactly). The four 3x3 512->512 convs alone hold 9.44 M; without
them (``anti_alias=False``) the count is 28.21 M, 4.5 % above the paper's figure: the paper's
count suggests its model had no (or much cheaper) anti-aliasing convs. The default keeps them,
as the text describes them; pass ``anti_alias=False`` for the paper's parameter budget.
Multiply-adds (conv + linear) at 256x128, measured: 11.62 G with the 3x3 convs (the one on P2
alone costs 4.83 G), 5.21 G without, against the paper's 5.9 G (baseline: 2.67 G measured, 2.6 G
in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from . import register_model
from .base import Backbone, ReIDModel, ReIDOutput, build_head
from .mobilenet import MobileNetV2Backbone, _torchvision_mobilenet_v2_state
from .osnet import OSNetBackbone, init_weights, load_backbone_weights
from .pretrained import load_pretrained
from .resnet import ResNetBackbone, _torchvision_resnet50_state


class CSIP(nn.Module):
    """Cross-scale information propagation: an FPN-style top-down pyramid (AMSFL, Sec. III-A).

    Args:
        in_channels: channels C_l of the used stage outputs, finest level first.
        dim: common width of the pyramid levels (512 in the paper).
        anti_alias: append a 3x3 conv to every merged level (the paper's anti-aliasing conv).

    Shapes:
        ``maps: [(B, C_l, H_l, W_l)]`` finest first -> ``[(B, dim, H_l, W_l)]``, same sizes.

    Raises:
        ValueError: ``in_channels`` empty.
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 512, anti_alias: bool = True):
        super().__init__()
        if not in_channels:
            raise ValueError("CSIP needs at least one input level")
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        smooth = (nn.Conv2d(dim, dim, 3, padding=1) if anti_alias else nn.Identity() for _ in in_channels)
        self.smooth = nn.ModuleList(smooth)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """Top-down merge, coarsest level first; see the class docstring for shapes.

        Raises:
            ValueError: ``len(maps)`` differs from the number of levels.
        """
        if len(maps) != len(self.lateral):
            raise ValueError(f"CSIP expects {len(self.lateral)} maps, got {len(maps)}")
        top = self.lateral[-1](maps[-1])  # (B, dim, H_L, W_L)
        merged = [top]
        for i in range(len(maps) - 2, -1, -1):
            up = F.interpolate(top, size=maps[i].shape[-2:], mode="nearest")  # (B, dim, H_i, W_i)
            top = self.lateral[i](maps[i]) + up
            merged.append(top)
        merged.reverse()  # finest first
        return [smooth(m) for smooth, m in zip(self.smooth, merged)]


class MSFF(nn.Module):
    """Multi-scale feature fusion: refine each level, pool it globally, concatenate (AMSFL).

    Args:
        extra_blocks: ResNet bottleneck blocks per level, finest first (paper: 3, 2, 1, 0).
        dim: channels of every level; a block is ``dim -> dim/4 -> dim`` (torchvision
            ``Bottleneck(dim, dim // 4)``), so ``dim`` must be divisible by 4 when blocks are used.

    Shapes:
        ``levels: [(B, dim, H_l, W_l)]`` -> ``(B, L * dim)``, level 1 first.

    Raises:
        ValueError: a negative block count, or ``dim`` not divisible by 4 with blocks.
    """

    def __init__(self, extra_blocks: Sequence[int], dim: int = 512):
        super().__init__()
        if any(n < 0 for n in extra_blocks):
            raise ValueError(f"extra_blocks must be >= 0, got {tuple(extra_blocks)}")
        if any(extra_blocks) and dim % 4:
            raise ValueError(f"bottleneck blocks need a width divisible by 4, got {dim}")
        self.refine = nn.ModuleList(
            nn.Sequential(*(Bottleneck(dim, dim // 4) for _ in range(n))) for n in extra_blocks
        )

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """Refined, pooled and concatenated levels; see the class docstring for shapes.

        Raises:
            ValueError: ``len(levels)`` differs from ``len(extra_blocks)``.
        """
        if len(levels) != len(self.refine):
            raise ValueError(f"MSFF expects {len(self.refine)} levels, got {len(levels)}")
        pooled = [F.adaptive_avg_pool2d(r(p), 1).flatten(1) for r, p in zip(self.refine, levels)]  # L x (B, dim)
        return torch.cat(pooled, dim=1)  # (B, L * dim)


def _check_levels(levels: Sequence[int], num_stages: int) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(not 1 <= s <= num_stages for s in levels) or list(levels) != sorted(set(levels)):
        raise ValueError(
            f"levels must be increasing 1-based stage numbers in 1..{num_stages} "
            f"(1 = first stage output), got {levels}"
        )
    return levels


class MSFLModel(ReIDModel):
    """AMSFL's MSFL network: backbone -> CSIP -> MSFF -> embedding head (Wang et al., 2020).

    ``model(x)`` returns the ``(B, embedding_dim)`` embedding (compare with Euclidean or cosine
    distance, smaller is closer). :meth:`forward_train` returns all the backbone's stage outputs
    in ``feature_maps``; they are the very tensors the neck consumes, so gradients of a loss with
    respect to them (MSGR) are meaningful. Stages above the top used level are computed by the
    backbone but unused downstream.

    Args:
        backbone: any :class:`Backbone`.
        num_classes: training identities for the classifier; 0 builds no classifier.
        levels: 1-based stage numbers of the stage outputs forming the pyramid, increasing
            (``1`` = ``feature_maps[0]``, ResNet's conv2). Default: all four.
        neck_dim: width of every pyramid level (the paper's 512).
        extra_blocks: bottleneck blocks per used level, finest first (one entry per level).
        embedding_dim: D of the ``bn_fc_relu`` / ``fc_bn_relu`` head (the paper's 512).
        head: ``"bn_fc_relu"`` (the paper's), ``"fc_bn_relu"`` or ``"bnneck"``
            (embedding = the ``L * neck_dim`` concatenation).
        anti_alias: the 3x3 conv per level after the top-down merge (see the module docstring
            for its cost).

    Raises:
        ValueError: bad ``levels``, ``extra_blocks`` not one per level, a bad block count or
            width, or an unknown ``head``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 0,
        levels: Sequence[int] = (1, 2, 3, 4),
        neck_dim: int = 512,
        extra_blocks: Sequence[int] = (3, 2, 1, 0),
        embedding_dim: int = 512,
        head: str = "bn_fc_relu",
        anti_alias: bool = True,
    ):
        levels = _check_levels(levels, len(backbone.out_channels))
        if len(extra_blocks) != len(levels):
            raise ValueError(f"extra_blocks needs one count per level {levels}, got {tuple(extra_blocks)}")
        super().__init__(backbone, build_head(head, len(levels) * neck_dim, num_classes, embedding_dim))
        self.levels = levels
        self.csip = CSIP([backbone.out_channels[s - 1] for s in levels], neck_dim, anti_alias)
        self.msff = MSFF(extra_blocks, neck_dim)
        self.csip.apply(init_weights)
        self.msff.apply(init_weights)

    def pyramid(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """CSIP levels from the backbone's stage outputs.

        Args:
            maps: all stage outputs, shallow to deep, each ``(B, C_s, H_s, W_s)``.

        Returns:
            One ``(B, neck_dim, H_l, W_l)`` map per used level, finest first.
        """
        return self.csip([maps[s - 1] for s in self.levels])

    def forward_train(self, x: Tensor) -> ReIDOutput:
        """``x: (B, 3, H, W)`` -> :class:`ReIDOutput`; ``feature_maps`` = backbone stage outputs."""
        maps = self.backbone(x)  # S x (B, C_s, H_s, W_s)
        pooled = self.msff(self.pyramid(maps))  # (B, L * neck_dim)
        feature, embedding, logits = self.head(pooled)
        return ReIDOutput(embedding, feature, logits, tuple(maps))


@register_model
def resnet50_msfl(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    last_stride: int = 2,
    **kwargs,
) -> MSFLModel:
    """ResNet-50 MSFL, the AMSFL model (Wang et al., 2020); ``last_stride=2`` as in the paper.

    Measured (no classifier): 37.65 M parameters with the default 3x3 anti-aliasing convs,
    28.21 M with ``anti_alias=False``; the paper reports 27 M (see the module docstring).

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights) or a local state dict path;
            loads the backbone only, as :func:`reidkit.models.resnet.resnet50` does.
        last_stride: stride of conv5, 2 (the paper's comparison) or 1.
        **kwargs: :class:`MSFLModel` options (``levels``, ``neck_dim``, ``extra_blocks``,
            ``embedding_dim``, ``head``, ``anti_alias``).
    """
    backbone = ResNetBackbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_resnet50_state)
    return MSFLModel(backbone, num_classes=num_classes, **kwargs)


@register_model
def resnet50_msfl_p3p5(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    last_stride: int = 2,
    **kwargs,
) -> MSFLModel:
    """ResNet-50 MSFL in the reading that matches the paper's parameter count: the pyramid on
    P3-P5 (conv3..conv5, ``levels=(2, 3, 4)``) with 3/2/1 extra bottleneck blocks and no 3x3
    anti-aliasing convs.

    Which reading is which (measured here, no classifier, 256 x 128 input, multiply-adds counted
    by ``torch.utils.flop_counter``; the paper's "FLOPs" are multiply-adds: its ResNet-50
    baseline, 2.6 G, is what reidkit's last-stride-2 ResNet-50 measures, 2.67 G):

    ========================================  ==========  ===========  ======================
    model                                     parameters  mult-adds    reading
    ========================================  ==========  ===========  ======================
    paper (AMSFL, Table I)                    27 M        5.9 G        --
    ``resnet50_msfl`` (default)               37.65 M     11.62 G      text: P2-P5, 3/2/1/0, 3x3 convs
    ``resnet50_msfl(anti_alias=False)``       28.21 M     5.21 G       P2-P5, 3/2/1/0, no 3x3
    ``resnet50_msfl_p3p5`` (this preset)      27.81 M     3.41 G       P3-P5, 3/2/1, no 3x3
    ========================================  ==========  ===========  ======================

    No reading matches both of the paper's figures: this one is nearest on parameters,
    ``anti_alias=False`` on the default levels nearest on compute.

    Args: as :func:`resnet50_msfl` (``**kwargs`` may still override ``levels``,
        ``extra_blocks`` or ``anti_alias``).
    """
    options = {"levels": (2, 3, 4), "extra_blocks": (3, 2, 1), "anti_alias": False, **kwargs}
    return resnet50_msfl(num_classes, pretrained, last_stride, **options)


@register_model
def mobilenet_v2_msfl(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    last_stride: int = 2,
    neck_dim: int = 256,
    **kwargs,
) -> MSFLModel:
    """MobileNetV2 MSFL. The neck is 256 wide by default (not 512) to match the light backbone.

    Measured (no classifier): 5.90 M parameters (15.13 M with a 512-wide neck).

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights) or a local state dict path
            with torchvision ``features.*`` key names.
        last_stride: 2 (ImageNet layout) or 1.
        neck_dim: pyramid width.
        **kwargs: other :class:`MSFLModel` options.
    """
    backbone = MobileNetV2Backbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_mobilenet_v2_state)
    return MSFLModel(backbone, num_classes=num_classes, neck_dim=neck_dim, **kwargs)


def _osnet_msfl(width: float, num_classes: int, pretrained, neck_dim: int, **kwargs) -> MSFLModel:
    if pretrained is True:
        raise ValueError(
            "pretrained=True: reidkit has no download source for OSNet ImageNet weights; "
            "pass the path of a local state dict instead"
        )
    backbone = OSNetBackbone(width=width)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    return MSFLModel(backbone, num_classes=num_classes, neck_dim=neck_dim, **kwargs)


@register_model
def osnet_x1_0_msfl(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    neck_dim: int = 512,
    **kwargs,
) -> MSFLModel:
    """OSNet x1.0 MSFL; conv4 and conv5 share stride 16, so their levels have the same size.

    Measured (no classifier): 14.93 M parameters.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None`` or a local OSNet backbone state dict; ``True`` raises ValueError.
        neck_dim: pyramid width.
        **kwargs: other :class:`MSFLModel` options.
    """
    return _osnet_msfl(1.0, num_classes, pretrained, neck_dim, **kwargs)


@register_model
def osnet_x0_25_msfl(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    neck_dim: int = 128,
    **kwargs,
) -> MSFLModel:
    """OSNet x0.25 MSFL; the neck is scaled with the width (128 = 0.25 x 512) by default.

    Measured (no classifier): 1.15 M parameters.

    Args: as :func:`osnet_x1_0_msfl`.
    """
    return _osnet_msfl(0.25, num_classes, pretrained, neck_dim, **kwargs)
