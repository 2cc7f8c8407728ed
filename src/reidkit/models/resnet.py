"""ResNet-50 for ReID: torchvision backbone, ``last_stride`` option, BNNeck or BN-FC-ReLU head.

Head choices: ``"bnneck"`` (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
ReID", CVPRW 2019), ``"bn_fc_relu"``, the 512-d head of the AMSFL baseline (seed 000), or
``"pool"``, the pooled 2048-d vector itself (torchreid's ``resnet50``).
"""

from __future__ import annotations

import os
import warnings

import torchvision
from torch import Tensor, nn

from . import register_model
from . import torchreid as _torchreid
from .base import Backbone, ReIDModel, build_head
from .pretrained import is_weights_path, load_pretrained, load_state, read_weights


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


class PoolHead(nn.Module):
    """No embedding layer: the embedding is the pooled feature (torchreid's ``resnet50``).

    Args:
        in_dim: pooled feature size C (also the embedding size D).
        num_classes: training identities; 0 for no classifier (a Linear with bias otherwise).
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.out_dim = in_dim
        self.classifier = nn.Linear(in_dim, num_classes) if num_classes > 0 else None

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``pooled: (B, C)`` -> ``(feature (B, C), embedding (B, C), logits (B, K) or None)``."""
        logits = self.classifier(pooled) if self.classifier is not None else None
        return pooled, pooled, logits


_BARE_TRUNK = (
    "weights file {!r} holds a bare ResNet-50 trunk (no classifier, fc or head), read as reidkit's "
    "resnet50 (last stride 1, new BNNeck head); if it is torchreid's resnet50 saved without its "
    "classifier, pass last_stride=2, head='pool' (config: model.kwargs.last_stride=2, "
    "model.kwargs.head=pool) for torchreid's embeddings; giving either silences this"
)


def _bare_trunk(state) -> bool:
    """The state dict is a ResNet-50 trunk and nothing else (torchvision, reidkit or torchreid)."""
    trunk = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    keys = [k.removeprefix("backbone.") for k in state]
    return "layer4.2.conv3.weight" in keys and all(k.startswith(trunk) for k in keys)


def _torchvision_resnet50_state() -> dict:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return weights.get_state_dict(progress=True)


@register_model
def resnet50(
    num_classes: int = 0,
    pretrained=None,
    last_stride: int | None = None,
    head: str | None = None,
    embedding_dim: int = 512,
) -> ReIDModel:
    """ResNet-50 ReID model.

    A torchreid ``resnet50`` checkpoint (recognised by its ``classifier`` next to the trunk) is
    rebuilt as torchreid's architecture unless ``last_stride`` / ``head`` say otherwise: last
    stride 2 and the ``"pool"`` head, so the embedding is torchreid's test-time feature.

    A file that holds the bare trunk (``conv1`` .. ``layer4``, no ``classifier``, ``fc`` or head
    tensors) cannot be told apart by its keys: it is torchvision's and reidkit's backbone layout,
    and also torchreid's ``resnet50`` saved without its classifier. It loads as reidkit's
    default (last stride 1, a new BNNeck head) and, unless ``last_stride`` or ``head`` is given,
    warns in one line: a torchreid file needs ``last_stride=2, head="pool"`` (in a config,
    ``model.kwargs: {last_stride: 2, head: pool}``) to give torchreid's embeddings.

    Args:
        num_classes: training identities (0: no classifier).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights into the backbone) or a local
            weights file (reidkit, torchvision or torchreid layout; ``WeightsFile(path,
            strict=False)`` to accept a partial one); see
            :func:`reidkit.models.pretrained.load_state_dict_file`.
        last_stride: 1 or 2; ``None``: 2 for a torchreid checkpoint, else 1 (Bag of Tricks).
        head: ``"bnneck"`` (2048-d embedding), ``"bn_fc_relu"`` (AMSFL, ``embedding_dim``-d),
            ``"fc_bn_relu"`` or ``"pool"`` (2048-d, no layer); ``None``: ``"pool"`` for a torchreid
            checkpoint, else ``"bnneck"``.
        embedding_dim: size of the FC heads' embedding; ignored by ``bnneck`` and ``pool``.

    Raises:
        ValueError: bad ``last_stride`` or ``head``.
        reidkit.models.pretrained.WeightsError: the weights file is missing, unsafe or does not fit.
    """
    state = read_weights(pretrained) if is_weights_path(pretrained) else None
    from_torchreid = state is not None and _torchreid.identify(state) == ("resnet", "resnet50")
    if state is not None and last_stride is None and head is None and _bare_trunk(state):
        warnings.warn(_BARE_TRUNK.format(os.fspath(pretrained)), stacklevel=3)
    if last_stride is None:
        last_stride = 2 if from_torchreid else 1
    if head is None:
        head = "pool" if from_torchreid else "bnneck"
    backbone = ResNetBackbone(last_stride=last_stride)
    if head == "pool":
        head_module = PoolHead(backbone.out_channels[-1], num_classes)
    else:
        head_module = build_head(head, backbone.out_channels[-1], num_classes, embedding_dim)
    model = ReIDModel(backbone, head_module)
    if state is not None:
        strict = getattr(pretrained, "strict", True)
        load_state(model, state, where=os.fspath(pretrained), strict=strict, arch="resnet50")
    else:
        load_pretrained(backbone, pretrained, _torchvision_resnet50_state)
    return model
