"""AlignedReID: a global branch plus horizontal-stripe local features (Zhang et al.,
"AlignedReID: Surpassing Human-Level Performance in Person Re-Identification", arXiv 1711.08184).

The global branch is the usual :class:`ReIDModel` (backbone -> global average pool -> head). The
local branch takes the same last stage map, max-pools it over the width into horizontal stripes
and maps every stripe to ``local_dim`` channels with a 1x1 conv + BN + ReLU::

    last map (B, C, H, W) -> max over W -> (B, C, S, 1) -> 1x1 conv, BN, ReLU -> (B, S, local_dim)

Training compares two images' stripes with the shortest-path alignment of
:func:`reidkit.losses.aligned.local_distance`. ``model(x)`` still returns the global embedding;
``model.forward_train(x).local_feature`` carries the stripes.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from torch.nn import functional as F

from . import register_model
from .base import Backbone, ReIDModel, ReIDOutput
from .mobilenet import mobilenet_v2
from .osnet import osnet_x0_25, osnet_x1_0
from .resnet import resnet50


class LocalBranch(nn.Module):
    """Horizontal max pooling into stripes, then 1x1 conv + BN + ReLU (AlignedReID's local branch).

    Args:
        in_channels: C, channels of the input map.
        local_dim: C_l, channels of every stripe feature (128 in the paper).
        num_stripes: S; ``None`` keeps one stripe per row of the input map (the paper's choice),
            an integer pools the rows into ``S`` stripes (adaptive max pooling over height and
            width).

    Raises:
        ValueError: ``local_dim`` or ``num_stripes`` is not a positive integer.
    """

    def __init__(self, in_channels: int, local_dim: int = 128, num_stripes: int | None = None):
        super().__init__()
        _check_positive("local_dim", local_dim)
        if num_stripes is not None:
            _check_positive("num_stripes", num_stripes)
        self.num_stripes = num_stripes
        self.out_dim = local_dim
        self.conv = nn.Conv2d(in_channels, local_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(local_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, fmap: Tensor) -> Tensor:
        """``fmap: (B, C, H, W)`` -> stripe features ``(B, S, local_dim)``, ``S = H`` by default."""
        if self.num_stripes is None:
            stripes = fmap.amax(dim=3, keepdim=True)  # (B, C, H, 1)
        else:
            stripes = F.adaptive_max_pool2d(fmap, (self.num_stripes, 1))  # (B, C, S, 1)
        local = self.relu(self.bn(self.conv(stripes)))  # (B, C_l, S, 1)
        return local.squeeze(3).transpose(1, 2)  # (B, S, C_l)


class AlignedReIDModel(ReIDModel):
    """A :class:`ReIDModel` with AlignedReID's local branch on the last stage map.

    ``forward_train(x)`` returns the parent's :class:`ReIDOutput` with ``local_feature:
    (B, S, local_dim)`` filled in; ``model(x)`` returns the ``(B, D)`` global embedding (the local
    branch is skipped there). Compare embeddings with Euclidean distance (smaller is closer);
    compare local features with :func:`reidkit.losses.aligned.local_distance`.

    Args:
        backbone: a :class:`Backbone`.
        head: the global head, as for :class:`ReIDModel`.
        local_dim: channels of every stripe feature.
        num_stripes: stripes S; ``None`` for one per row of the last map.

    Raises:
        ValueError: ``local_dim`` or ``num_stripes`` is not a positive integer.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        local_dim: int = 128,
        num_stripes: int | None = None,
    ):
        super().__init__(backbone, head)
        self.local_branch = LocalBranch(backbone.out_channels[-1], local_dim, num_stripes)

    def forward_train(self, x: Tensor) -> ReIDOutput:
        """``x: (B, 3, H, W)`` -> :class:`ReIDOutput` with ``local_feature: (B, S, local_dim)``."""
        out = super().forward_train(x)
        return out._replace(local_feature=self.local_branch(out.feature_maps[-1]))

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> global embedding ``(B, D)`` float."""
        return super().forward_train(x).embedding


def with_local_branch(
    model: ReIDModel, local_dim: int = 128, num_stripes: int | None = None
) -> AlignedReIDModel:
    """The backbone and head of ``model`` (weights shared, not copied) plus a new local branch."""
    return AlignedReIDModel(model.backbone, model.head, local_dim, num_stripes)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@register_model
def mobilenet_v2_aligned(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    local_dim: int = 128,
    num_stripes: int | None = None,
    **kwargs,
) -> AlignedReIDModel:
    """:func:`reidkit.models.mobilenet.mobilenet_v2` with AlignedReID's local branch.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: as for ``mobilenet_v2`` (loads the backbone only).
        local_dim: stripe feature size (128 in the paper).
        num_stripes: ``None`` for one stripe per row of the last map (8 at 256 x 128).
        **kwargs: passed to ``mobilenet_v2`` (``last_stride``, ``head``, ``embedding_dim``).
    """
    base = mobilenet_v2(num_classes=num_classes, pretrained=pretrained, **kwargs)
    return with_local_branch(base, local_dim, num_stripes)


@register_model
def resnet50_aligned(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    local_dim: int = 128,
    num_stripes: int | None = None,
    **kwargs,
) -> AlignedReIDModel:
    """:func:`reidkit.models.resnet.resnet50` with AlignedReID's local branch (the paper's
    backbone).

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: as for ``resnet50`` (loads the backbone only).
        local_dim: stripe feature size (128 in the paper).
        num_stripes: ``None`` for one stripe per row of the last map (16 at 256 x 128 with the
            default ``last_stride=1``).
        **kwargs: passed to ``resnet50`` (``last_stride``, ``head``, ``embedding_dim``).
    """
    base = resnet50(num_classes=num_classes, pretrained=pretrained, **kwargs)
    return with_local_branch(base, local_dim, num_stripes)


@register_model
def osnet_x1_0_aligned(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    local_dim: int = 128,
    num_stripes: int | None = None,
    **kwargs,
) -> AlignedReIDModel:
    """:func:`reidkit.models.osnet.osnet_x1_0` with AlignedReID's local branch.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: as for ``osnet_x1_0`` (a local backbone state dict; ``True`` raises).
        local_dim: stripe feature size (128 in the paper).
        num_stripes: ``None`` for one stripe per row of the last map (16 at 256 x 128).
        **kwargs: passed to ``osnet_x1_0`` (``head``, ``embedding_dim``, backbone options).
    """
    base = osnet_x1_0(num_classes=num_classes, pretrained=pretrained, **kwargs)
    return with_local_branch(base, local_dim, num_stripes)


@register_model
def osnet_x0_25_aligned(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    local_dim: int = 128,
    num_stripes: int | None = None,
    **kwargs,
) -> AlignedReIDModel:
    """:func:`reidkit.models.osnet.osnet_x0_25` with AlignedReID's local branch; arguments as for
    :func:`osnet_x1_0_aligned`."""
    base = osnet_x0_25(num_classes=num_classes, pretrained=pretrained, **kwargs)
    return with_local_branch(base, local_dim, num_stripes)
