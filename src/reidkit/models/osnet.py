"""OSNet, the omni-scale network (Zhou, Yang, Cavallaro, Xiang, "Omni-Scale Feature Learning for
Person Re-Identification", ICCV 2019).

The building block is a residual bottleneck whose residual branch has T = 4 streams; stream t
stacks t :class:`LiteConv3x3` layers, so it sees a (2t + 1) x (2t + 1) window (3, 5, 7, 9). One
:class:`ChannelGate` (the paper's *unified aggregation gate*), shared by all streams, weighs every
stream's channels from that stream's own content, and the weighted streams are summed.

Network (paper Table 1, x1.0, sizes for a 256 x 128 input)::

    conv1       7x7 conv, stride 2, 64        128 x 64
                3x3 max pool, stride 2         64 x 32
    conv2       OSBlock x 2, 256               64 x 32   stride 4
    transition  1x1 conv 256, 2x2 avg pool     32 x 16
    conv3       OSBlock x 2, 384               32 x 16   stride 8
    transition  1x1 conv 384, 2x2 avg pool     16 x 8
    conv4       OSBlock x 2, 512               16 x 8    stride 16
    conv5       1x1 conv, 512                  16 x 8    stride 16
    head        global average pool -> FC 512 -> BN -> ReLU

Every convolution is followed by BN and ReLU, except three linear ones: the pointwise conv inside
Lite 3x3 (no BN/ReLU), and an OSBlock's 1x1 expansion and 1x1 shortcut projection (BN only).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import register_model
from .base import Backbone, ReIDModel, build_head


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias) -> BN -> ReLU; ``relu=False`` gives a linear conv + BN."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
    layers = [conv, nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LiteConv3x3(nn.Module):
    """Lite 3x3: linear 1x1 pointwise conv -> 3x3 depthwise conv -> BN -> ReLU (OSNet, Sec. 3.1).

    A factorised 3x3 convolution with ``in*out + 9*out`` weights instead of ``9*in*out``. The paper
    puts the pointwise conv first (it found this order better for omni-scale learning).

    Args:
        in_channels: C_in.
        out_channels: C_out.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.depthwise = nn.Conv2d(
            out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.depthwise(self.pointwise(x))))


class ChannelGate(nn.Module):
    """OSNet's unified aggregation gate G (Sec. 3.2): channel weights computed from the input.

    global average pool -> FC(C -> C / reduction) -> ReLU -> FC(-> C) -> sigmoid. The paper sets
    the hidden-layer reduction to 16. One gate is shared by all streams of a block; it returns the
    weights, and the block multiplies each stream by its own weights, ``G(x^t) * x^t``.

    The two FCs are 1x1 convolutions on the pooled ``(B, C, 1, 1)`` map (identical maths to
    ``nn.Linear``), so they get the convolutions' Kaiming initialisation.

    Args:
        channels: C, the stream width (a block's C_out / 4).
        reduction: hidden size is ``max(C // reduction, 1)``.

    Shapes:
        ``x: (B, C, H, W) -> weights (B, C, 1, 1)`` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return torch.sigmoid(self.fc2(self.relu(self.fc1(s))))  # (B, C, 1, 1)


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck (OSNet, Sec. 3.2, Fig. 4).

    ``y = ReLU(shortcut(x) + expand(sum_t G(x^t) * x^t))`` with ``x^t = F^t(reduce(x))``, where
    ``reduce`` is a 1x1 conv to C_out / 4 (BN, ReLU), stream ``F^t`` stacks t
    :class:`LiteConv3x3` layers (receptive field 2t + 1), ``G`` is the shared :class:`ChannelGate`,
    ``expand`` is a linear 1x1 conv to C_out (BN, no ReLU) and ``shortcut`` is the identity, or a
    linear 1x1 conv (BN) when C_in != C_out.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        num_streams: T, the number of streams (4 in the paper).
        bottleneck_reduction: C_out / stream width (4 in the paper).
        gate_reduction: the gate's hidden-layer reduction (16 in the paper).

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_streams: int = 4,
        bottleneck_reduction: int = 4,
        gate_reduction: int = 16,
    ):
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.reduce = _conv_bn(in_channels, mid, 1)
        self.streams = nn.ModuleList(  # stream t (1-based) stacks t Lite 3x3 layers
            nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(t)))
            for t in range(1, num_streams + 1)
        )
        self.gate = ChannelGate(mid, gate_reduction)
        self.expand = _conv_bn(mid, out_channels, 1, relu=False)
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else _conv_bn(in_channels, out_channels, 1, relu=False)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.reduce(x)  # (B, C_out / 4, H, W)
        fused = 0
        for stream in self.streams:
            h_t = stream(h)  # (B, C_out / 4, H, W)
            fused = fused + self.gate(h_t) * h_t
        return self.relu(self.expand(fused) + self.shortcut(x))  # (B, C_out, H, W)


def _transition(channels: int) -> nn.Sequential:
    """1x1 conv (BN, ReLU) -> 2x2 average pool, stride 2: halves H and W, keeps C."""
    return nn.Sequential(_conv_bn(channels, channels, 1), nn.AvgPool2d(2, stride=2))


def _stage(in_ch: int, out_ch: int, depth: int, gate_reduction: int) -> list[nn.Module]:
    blocks = [OSBlock(in_ch, out_ch, gate_reduction=gate_reduction)]
    blocks += [OSBlock(out_ch, out_ch, gate_reduction=gate_reduction) for _ in range(depth - 1)]
    return blocks


class OSNetBackbone(Backbone):
    """OSNet feature extractor (Zhou et al., ICCV 2019, Table 1) with a width multiplier.

    Returns four stage outputs: conv2, conv3, conv4 and conv5 (strides 4, 8, 16, 16). Each
    transition (1x1 conv + 2x2 average pool) is the *first* layer of the stage that follows it, so
    every stage output is the map at that stage's own stride; conv1 and the max pool form a stem
    that is not returned.

    Args:
        width: the paper's width multiplier beta; scales every channel count, conv1 and conv5
            included (``round(c * width)``). The paper's variants are 1.0, 0.75, 0.5 and 0.25.
        depths: OSBlocks in conv2, conv3, conv4.
        gate_reduction: the aggregation gate's hidden-layer reduction.

    Shapes:
        ``x: (B, 3, H, W)`` -> ``[(B, 256w, H/4, W/4), (B, 384w, H/8, W/8), (B, 512w, H/16, W/16),
        (B, 512w, H/16, W/16)]`` with ``w = width`` (64 x 32, 32 x 16, 16 x 8, 16 x 8 at 256 x 128).
    """

    def __init__(
        self,
        width: float = 1.0,
        depths: tuple[int, int, int] = (2, 2, 2),
        gate_reduction: int = 16,
    ):
        super().__init__()
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 256, 384, 512))
        self.stem = nn.Sequential(  # conv1 + max pool: stride 4
            _conv_bn(3, c1, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
        )
        self.conv2 = nn.Sequential(*_stage(c1, c2, depths[0], gate_reduction))
        self.conv3 = nn.Sequential(_transition(c2), *_stage(c2, c3, depths[1], gate_reduction))
        self.conv4 = nn.Sequential(_transition(c3), *_stage(c3, c4, depths[2], gate_reduction))
        self.conv5 = _conv_bn(c4, c4, 1)
        self.out_channels = [c2, c3, c4, c4]
        self.apply(init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x: (B, 3, H, W)`` -> the four stage outputs, shallow to deep (see class docstring)."""
        outs = []
        x = self.stem(x)  # (B, 64w, H/4, W/4)
        for stage in (self.conv2, self.conv3, self.conv4, self.conv5):
            x = stage(x)
            outs.append(x)
        return outs


def init_weights(m: nn.Module) -> None:
    """OSNet's initialisation, for ``module.apply``.

    Kaiming-normal convolutions (fan-out, ReLU gain) with zero biases; BN weight 1 and bias 0;
    linear weights N(0, 0.01) with zero biases.
    """
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a local state dict into ``backbone``, non-strictly.

    Keys may carry a ``module.`` (DataParallel) and/or ``backbone.`` (a whole :class:`ReIDModel`)
    prefix; keys that do not name a backbone tensor of the same shape (e.g. a head) are ignored.

    Args:
        backbone: the module to load into.
        path: file written by ``torch.save(state_dict, path)``; read with ``weights_only=True``.

    Returns:
        The backbone keys the file did not provide (also reported with a warning).

    Raises:
        ValueError: no key of the file matched the backbone.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = backbone.state_dict()
    state = {_strip_prefixes(k): v for k, v in state.items()}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(
            f"no key of {str(path)!r} matches the OSNet backbone; is it an OSNet state dict?"
        )
    backbone.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched]
    if missing:
        msg = f"{path}: {len(missing)} backbone keys not loaded: {', '.join(missing)}"
        warnings.warn(msg, stacklevel=2)
    return missing


def _osnet(
    width: float,
    num_classes: int,
    pretrained: bool | str | Path | None,
    head: str,
    embedding_dim: int,
    **kwargs,
) -> ReIDModel:
    if pretrained is True:
        raise ValueError(
            "pretrained=True: reidkit has no download source for OSNet ImageNet weights; "
            "pass the path of a local state dict instead"
        )
    backbone = OSNetBackbone(width=width, **kwargs)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    head_module = build_head(head, backbone.out_channels[-1], num_classes, dim=embedding_dim)
    if head != "bnneck":  # BNNeck keeps its own documented initialisation
        head_module.apply(init_weights)
    return ReIDModel(backbone, head_module)


@register_model
def osnet_x1_0(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet x1.0 (Zhou et al., ICCV 2019) with the paper's FC-BN-ReLU head.

    Size at 256 x 128 (FC-512 head, no classifier): 2.17 M parameters and 978.9 M multiply-adds
    measured here; the paper gives 2.2 M and 0.98 G.

    Args:
        num_classes: training identities for the classifier; 0 builds no classifier.
        pretrained: ``None`` (random init) or the path of a local backbone state dict (see
            :func:`load_backbone_weights`). ``True`` raises: no download source exists here.
        head: ``"fc_bn_relu"`` (the paper's head), ``"bn_fc_relu"`` or ``"bnneck"``.
        embedding_dim: D, the FC size of the FC heads (512 in the paper, at every width).
        **kwargs: passed to :class:`OSNetBackbone` (``depths``, ``gate_reduction``).

    Raises:
        ValueError: ``pretrained=True``, a file with no matching key, or an unknown ``head``.
    """
    return _osnet(1.0, num_classes, pretrained, head, embedding_dim, **kwargs)


@register_model
def osnet_x0_75(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet x0.75; arguments as for :func:`osnet_x1_0`.

    Measured at 256 x 128: 1.29 M parameters (FC-512 head), 571.8 M multiply-adds.
    """
    return _osnet(0.75, num_classes, pretrained, head, embedding_dim, **kwargs)


@register_model
def osnet_x0_5(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet x0.5; arguments as for :func:`osnet_x1_0`.

    Measured at 256 x 128: 0.63 M parameters (FC-512 head), 272.9 M multiply-adds.
    """
    return _osnet(0.5, num_classes, pretrained, head, embedding_dim, **kwargs)


@register_model
def osnet_x0_25(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet x0.25; arguments as for :func:`osnet_x1_0`.

    Measured at 256 x 128: 0.20 M parameters (FC-512 head), 82.3 M multiply-adds; the paper
    gives 0.2 M and 0.08 G.
    """
    return _osnet(0.25, num_classes, pretrained, head, embedding_dim, **kwargs)
