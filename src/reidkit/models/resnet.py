"""ResNet-50 for ReID: torchvision backbone, ``last_stride`` option, BNNeck or BN-FC-ReLU head.

Head choices: ``"bnneck"`` (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
ReID", CVPRW 2019) or ``"bn_fc_relu"``, the 512-d head of the AMSFL baseline (seed 000).
"""

from __future__ import annotations

import torchvision
from torch import Tensor

from . import register_model
from .base import Backbone, ReIDModel, build_head
from .pretrained import load_pretrained


class ResNetBackbone(Backbone):
    """torchvision ResNet-50 trunk returning the outputs of stages conv2..conv5.

    Args:
        last_stride: stride of conv5 (2 as in ImageNet ResNet; 1 doubles the final map,
            16x8 at 256x128 input, as in Bag of Tricks).

    Stage outputs for ``x: (B, 3, H, W)``: ``(B, 256, H/4, W/4)``, ``(B, 512, H/8, W/8)``,
    ``(B, 1024, H/16, W/16)``, ``(B, 2048, H/(16*last_stride), W/(16*last_stride))``.

    Raises:
        ValueError: ``last_stride`` not 1 or 2.
    """

    def __init__(self, last_stride: int = 2):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        net = torchvision.models.resnet50(weights=None)
        if last_stride == 1:
            net.layer4[0].conv2.stride = (1, 1)
            net.layer4[0].downsample[0].stride = (1, 1)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = [256, 512, 1024, 2048]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps


def _torchvision_resnet50_state() -> dict:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return weights.get_state_dict(progress=True)


@register_model
def resnet50(
    num_classes: int = 0,
    pretrained=None,
    last_stride: int = 1,
    head: str = "bnneck",
    embedding_dim: int = 512,
) -> ReIDModel:
    """ResNet-50 ReID model.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights) or a local state dict path.
        last_stride: 1 (Bag of Tricks default) or 2.
        head: ``"bnneck"`` (2048-d embedding) or ``"bn_fc_relu"`` (AMSFL, ``embedding_dim``-d).
        embedding_dim: size of the ``bn_fc_relu`` embedding; ignored by ``bnneck``.
    """
    backbone = ResNetBackbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_resnet50_state)
    return ReIDModel(backbone, build_head(head, backbone.out_channels[-1], num_classes, embedding_dim))
