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

The instance-normalisation variants OSNet-IBN and OSNet-AIN (Zhou et al., TPAMI 2021) reuse these
modules with the ``stem_norm`` / ``instance_norm`` options; their factories are in
:mod:`reidkit.models.osnet_ain`. Checkpoints of torchreid's OSNet family load through
:mod:`reidkit.models.torchreid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from . import register_model
from .base import Backbone, ReIDModel, build_head
from .pretrained import LoadReport, load_pretrained, load_state_dict_file

# Where an OSBlock may hold an instance normalisation (IN) layer; see OSBlock.
INSTANCE_NORM_PLACES = ("residual", "output")


def _conv_bn(
    in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, relu: bool = True, norm: str = "bn"
) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias) -> BN -> ReLU; ``relu=False`` gives a linear conv + BN.

    ``norm="in"`` puts an affine instance normalisation where the BN would be.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
    layers = [conv, _norm(norm, out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _norm(kind: str, channels: int) -> nn.Module:
    """``"bn"``: BatchNorm2d; ``"in"``: InstanceNorm2d with a learned affine transform.

    Raises:
        ValueError: another ``kind``.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be 'bn' or 'in', got {kind!r}")


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

    Instance normalisation (Zhou et al., "Learning Generalisable Omni-Scale Representations for
    Person Re-Identification", TPAMI 2021), both with a learned affine transform:

    * ``instance_norm="residual"``: IN replaces the BN of ``expand``, inside the residual branch,
      ``y = ReLU(shortcut(x) + IN(conv(fused)))``: OSNet-AIN's block (torchreid's ``OSBlockINin``).
    * ``instance_norm="output"``: IN on the sum, before the final ReLU,
      ``y = ReLU(IN(shortcut(x) + expand(fused)))``: OSNet-IBN's block, after IBN-Net-b (Pan et
      al., ECCV 2018).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        num_streams: T, the number of streams (4 in the paper).
        bottleneck_reduction: C_out / stream width (4 in the paper).
        gate_reduction: the gate's hidden-layer reduction (16 in the paper).
        instance_norm: ``None`` (plain OSNet), ``"residual"`` or ``"output"``.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Raises:
        ValueError: unknown ``instance_norm``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_streams: int = 4,
        bottleneck_reduction: int = 4,
        gate_reduction: int = 16,
        instance_norm: str | None = None,
    ):
        super().__init__()
        if instance_norm is not None and instance_norm not in INSTANCE_NORM_PLACES:
            raise ValueError(
                f"instance_norm must be None, 'residual' or 'output', got {instance_norm!r}"
            )
        mid = out_channels // bottleneck_reduction
        self.reduce = _conv_bn(in_channels, mid, 1)
        self.streams = nn.ModuleList(  # stream t (1-based) stacks t Lite 3x3 layers
            nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(t)))
            for t in range(1, num_streams + 1)
        )
        self.gate = ChannelGate(mid, gate_reduction)
        expand_norm = "in" if instance_norm == "residual" else "bn"
        self.expand = _conv_bn(mid, out_channels, 1, relu=False, norm=expand_norm)
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else _conv_bn(in_channels, out_channels, 1, relu=False)
        )
        if instance_norm == "output":
            self.out_norm = _norm("in", out_channels)
        else:
            self.out_norm = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.reduce(x)  # (B, C_out / 4, H, W)
        fused = 0
        for stream in self.streams:
            h_t = stream(h)  # (B, C_out / 4, H, W)
            fused = fused + self.gate(h_t) * h_t
        out = self.out_norm(self.expand(fused) + self.shortcut(x))  # (B, C_out, H, W)
        return self.relu(out)


def _transition(channels: int) -> nn.Sequential:
    """1x1 conv (BN, ReLU) -> 2x2 average pool, stride 2: halves H and W, keeps C."""
    return nn.Sequential(_conv_bn(channels, channels, 1), nn.AvgPool2d(2, stride=2))


def _stage(
    in_ch: int, out_ch: int, norms: Sequence[str | None], gate_reduction: int
) -> list[nn.Module]:
    """One OSBlock per entry of ``norms`` (its ``instance_norm``); the first maps in_ch -> out_ch."""
    widths = [in_ch] + [out_ch] * (len(norms) - 1)
    return [
        OSBlock(c, out_ch, gate_reduction=gate_reduction, instance_norm=norm)
        for c, norm in zip(widths, norms)
    ]


def _block_norms(
    depths: Sequence[int], instance_norm: Sequence[Sequence[str | None]] | None
) -> list[list[str | None]]:
    """Per-stage, per-block ``instance_norm`` values, checked against ``depths``."""
    if instance_norm is None:
        return [[None] * d for d in depths]
    norms = [list(stage) for stage in instance_norm]
    if [len(n) for n in norms] != list(depths):
        raise ValueError(
            f"instance_norm must give one entry per OSBlock, {list(depths)} per stage; "
            f"got {[len(n) for n in norms]}"
        )
    return norms


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
        stem_norm: normalisation after conv1: ``"bn"``, or ``"in"`` (affine instance
            normalisation, as in OSNet-IBN and OSNet-AIN; Zhou et al., TPAMI 2021).
        instance_norm: ``None`` (no IN in any block) or, per stage conv2..conv4, one
            :class:`OSBlock` ``instance_norm`` value per block (``None``, ``"residual"`` or
            ``"output"``).

    Shapes:
        ``x: (B, 3, H, W)`` -> ``[(B, 256w, H/4, W/4), (B, 384w, H/8, W/8), (B, 512w, H/16, W/16),
        (B, 512w, H/16, W/16)]`` with ``w = width`` (64 x 32, 32 x 16, 16 x 8, 16 x 8 at 256 x 128).

    Raises:
        ValueError: ``instance_norm`` does not match ``depths``, or an unknown norm name.
    """

    def __init__(
        self,
        width: float = 1.0,
        depths: tuple[int, int, int] = (2, 2, 2),
        gate_reduction: int = 16,
        stem_norm: str = "bn",
        instance_norm: Sequence[Sequence[str | None]] | None = None,
    ):
        super().__init__()
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 256, 384, 512))
        n2, n3, n4 = _block_norms(depths, instance_norm)
        self.stem = nn.Sequential(  # conv1 + max pool: stride 4
            _conv_bn(3, c1, 7, stride=2, norm=stem_norm), nn.MaxPool2d(3, stride=2, padding=1)
        )
        self.conv2 = nn.Sequential(*_stage(c1, c2, n2, gate_reduction))
        self.conv3 = nn.Sequential(_transition(c2), *_stage(c2, c3, n3, gate_reduction))
        self.conv4 = nn.Sequential(_transition(c3), *_stage(c3, c4, n4, gate_reduction))
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

    Kaiming-normal convolutions (fan-out, ReLU gain) with zero biases; BN and affine IN weight 1
    and bias 0; linear weights N(0, 0.01) with zero biases.
    """
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, strict: bool = True
) -> LoadReport:
    """Load a weights file into an OSNet backbone alone (its head, if any, is skipped).

    Thin wrapper of :func:`reidkit.models.pretrained.load_state_dict_file`, which documents the
    accepted files (reidkit or torchreid layout, any usual wrapping) and the errors
    (:class:`~reidkit.models.pretrained.WeightsError`).
    """
    return load_state_dict_file(backbone, path, strict=strict)


def build_osnet(
    arch: str,
    width: float,
    num_classes: int,
    pretrained: bool | str | Path | None,
    head: str,
    embedding_dim: int,
    **backbone_kwargs,
) -> ReIDModel:
    """An OSNet-family :class:`ReIDModel` named ``arch``, optionally loaded from a weights file.

    The whole model is loaded (backbone and, when the file has one, the FC-BN-ReLU head), so a
    torchreid checkpoint gives torchreid's own test-time feature.

    Args:
        arch: the registered name (messages; a torchreid file of another model is named).
        width: the width multiplier.
        num_classes: classifier size; 0 for none.
        pretrained: ``None``, a path or a ``WeightsFile``; ``True`` raises.
        head: ``"fc_bn_relu"``, ``"bn_fc_relu"`` or ``"bnneck"``.
        embedding_dim: D of the FC heads.
        **backbone_kwargs: :class:`OSNetBackbone` options.

    Raises:
        ValueError: ``pretrained=True`` (no download source), or an unknown ``head``.
        reidkit.models.pretrained.WeightsError: the file cannot be read or does not fit.
    """
    if pretrained is True:
        raise ValueError(
            f"pretrained=True: reidkit has no download source for {arch} weights; "
            "pass the path of a local state dict instead"
        )
    backbone = OSNetBackbone(width=width, **backbone_kwargs)
    head_module = build_head(head, backbone.out_channels[-1], num_classes, dim=embedding_dim)
    if head != "bnneck":  # BNNeck keeps its own documented initialisation
        head_module.apply(init_weights)
    model = ReIDModel(backbone, head_module)
    load_pretrained(model, pretrained, arch=arch)
    return model


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
        pretrained: ``None`` (random init) or the path of a local weights file: a reidkit
            model or backbone state dict, or a torchreid ``osnet_x1_0`` checkpoint (any wrapping;
            see :func:`reidkit.models.pretrained.load_state_dict_file`), optionally as
            ``WeightsFile(path, strict=False)``. ``True`` raises: no download source exists here.
        head: ``"fc_bn_relu"`` (the paper's head), ``"bn_fc_relu"`` or ``"bnneck"``.
        embedding_dim: D, the FC size of the FC heads (512 in the paper, at every width).
        **kwargs: passed to :class:`OSNetBackbone` (``depths``, ``gate_reduction``).

    Raises:
        ValueError: ``pretrained=True`` or an unknown ``head``.
        reidkit.models.pretrained.WeightsError: the weights file is missing, unsafe or does not
            fit (missing backbone tensors, keys that fit nowhere, other shapes).
    """
    return build_osnet("osnet_x1_0", 1.0, num_classes, pretrained, head, embedding_dim, **kwargs)


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
    return build_osnet("osnet_x0_75", 0.75, num_classes, pretrained, head, embedding_dim, **kwargs)


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
    return build_osnet("osnet_x0_5", 0.5, num_classes, pretrained, head, embedding_dim, **kwargs)


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
    return build_osnet("osnet_x0_25", 0.25, num_classes, pretrained, head, embedding_dim, **kwargs)
