"""MobileNetV2 for ReID (Sandler et al., CVPR 2018) on torchvision's implementation.

The backbone keeps torchvision's module names (``features.0.0.weight`` ... ``features.18.1.*``),
so a plain torchvision ``mobilenet_v2().features`` state dict, such as
``../shared/weights/mobilenet_v2_imagenet_features.pth``, loads directly.
"""

from __future__ import annotations

import torchvision
from torch import Tensor

from . import register_model
from .base import Backbone, ReIDModel, build_head
from .pretrained import load_pretrained

# Index ranges of torchvision's ``features`` that end at strides 4, 8, 16 and 32.
_STAGES = ((0, 4), (4, 7), (7, 14), (14, 19))


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 trunk returning four stage outputs.

    Args:
        last_stride: stride of the last downsampling block (``features.14``); 1 keeps the final
            map at 1/16 of the input as ``last_stride=1`` does for ResNet.

    Stage outputs for ``x: (B, 3, H, W)``: ``(B, 24, H/4, W/4)``, ``(B, 32, H/8, W/8)``,
    ``(B, 96, H/16, W/16)``, ``(B, 1280, H/(16*last_stride), W/(16*last_stride))``.

    Raises:
        ValueError: ``last_stride`` not 1 or 2.
    """

    def __init__(self, last_stride: int = 2):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        if last_stride == 1:
            self.features[14].conv[1][0].stride = (1, 1)
        self.out_channels = [24, 32, 96, 1280]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for start, end in _STAGES:
            for i in range(start, end):
                x = self.features[i](x)
            maps.append(x)
        return maps


def _torchvision_mobilenet_v2_state() -> dict:
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    return {k: v for k, v in weights.get_state_dict(progress=True).items() if k.startswith("features.")}


@register_model
def mobilenet_v2(
    num_classes: int = 0,
    pretrained=None,
    last_stride: int = 2,
    head: str = "bnneck",
    embedding_dim: int = 512,
) -> ReIDModel:
    """MobileNetV2 ReID model.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights) or a local state dict path
            (torchvision ``features.*`` key names).
        last_stride: 2 (ImageNet layout) or 1.
        head: ``"bnneck"`` (1280-d embedding), ``"bn_fc_relu"`` or ``"fc_bn_relu"``
            (``embedding_dim``-d).
        embedding_dim: size of a learned embedding head; ignored by ``bnneck``.
    """
    backbone = MobileNetV2Backbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_mobilenet_v2_state)
    return ReIDModel(backbone, build_head(head, backbone.out_channels[-1], num_classes, embedding_dim))
