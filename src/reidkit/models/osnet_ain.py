"""OSNet with instance normalisation: OSNet-IBN and OSNet-AIN (Zhou, Yang, Cavallaro, Xiang,
"Learning Generalisable Omni-Scale Representations for Person Re-Identification", TPAMI 2021).

Instance normalisation (IN) removes instance-specific contrast and style, which helps a model
trained on one dataset work on another (cross-domain ReID). Both variants are OSNet
(:mod:`reidkit.models.osnet`) with affine IN layers at fixed places and the same size: an affine
IN has as many parameters as the BN it replaces, and no multiply-adds are counted for it.

* **OSNet-IBN** (``osnet_ibn_x1_0``), after IBN-Net-b (Pan et al., ECCV 2018): IN instead of BN
  after conv1, and IN on the output of both conv2 blocks, after the residual sum and before the
  ReLU (:class:`~reidkit.models.osnet.OSBlock` ``instance_norm="output"``).
* **OSNet-AIN** (``osnet_ain_x*``), the architecture the paper found by differentiable search:
  IN instead of BN after conv1, and in five of the six blocks IN instead of the BN of the 1x1
  expansion, inside the residual branch (``instance_norm="residual"``): both conv2 blocks, the
  second conv3 block and the first conv4 block (:data:`AIN_BLOCKS`).

The placement is torchreid's (``osnet.py`` ``osnet_ibn_x1_0``; ``osnet_ain.py``, blocks
``[[OSBlockINin, OSBlockINin], [OSBlock, OSBlockINin], [OSBlockINin, OSBlock]]``,
``conv1_IN=True``), whose model-zoo checkpoints load into these models (see
:mod:`reidkit.models.torchreid`). Everything else (widths, gate, head FC-512-BN-ReLU) is OSNet's.
"""

from __future__ import annotations

from pathlib import Path

from . import register_model
from .base import ReIDModel
from .osnet import build_osnet

IBN_BLOCKS = (("output", "output"), (None, None), (None, None))
"""OSNet-IBN's ``instance_norm`` per block of conv2, conv3, conv4."""

AIN_BLOCKS = (("residual", "residual"), (None, "residual"), ("residual", None))
"""OSNet-AIN's ``instance_norm`` per block of conv2, conv3, conv4."""


def _in_variant(
    arch: str, width: float, blocks, num_classes, pretrained, head, embedding_dim, **kwargs
) -> ReIDModel:
    return build_osnet(
        arch, width, num_classes, pretrained, head, embedding_dim,
        stem_norm="in", instance_norm=blocks, **kwargs,
    )  # fmt: skip


@register_model
def osnet_ibn_x1_0(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet-IBN x1.0 (Zhou et al., TPAMI 2021; torchreid ``osnet_ibn_x1_0``).

    Measured at 256 x 128 (FC-512 head, no classifier): 2,170,532 parameters (OSNet x1.0 plus the
    two 256-channel output INs) and 978.9 M multiply-adds; torchreid's zoo lists 2.2 M and
    0.98 GFLOPs.

    Args:
        num_classes: training identities for the classifier; 0 builds no classifier.
        pretrained: ``None`` or a local weights file: a reidkit state dict or torchreid's
            ``osnet_ibn_x1_0`` checkpoint (any wrapping), optionally ``WeightsFile(path,
            strict=False)``. ``True`` raises: no download source exists here.
        head: ``"fc_bn_relu"`` (the paper's and torchreid's head), ``"bn_fc_relu"`` or
            ``"bnneck"``.
        embedding_dim: D, the FC size of the FC heads.
        **kwargs: passed to :class:`~reidkit.models.osnet.OSNetBackbone` (``gate_reduction``).

    Raises:
        ValueError: ``pretrained=True`` or an unknown ``head``.
        reidkit.models.pretrained.WeightsError: the weights file is missing, unsafe or does not
            fit.
    """
    return _in_variant(
        "osnet_ibn_x1_0", 1.0, IBN_BLOCKS, num_classes, pretrained, head, embedding_dim, **kwargs
    )


@register_model
def osnet_ain_x1_0(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet-AIN x1.0 (Zhou et al., TPAMI 2021; torchreid ``osnet_ain_x1_0``).

    Measured at 256 x 128 (FC-512 head, no classifier): 2,169,508 parameters and 978.9 M
    multiply-adds, as OSNet x1.0; torchreid's zoo lists 2.2 M and 0.98 GFLOPs.

    Args:
        num_classes: training identities for the classifier; 0 builds no classifier.
        pretrained: ``None`` or a local weights file: a reidkit state dict or torchreid's
            ``osnet_ain_x1_0`` checkpoint (any wrapping), optionally ``WeightsFile(path,
            strict=False)``. ``True`` raises: no download source exists here.
        head: ``"fc_bn_relu"`` (the paper's and torchreid's head), ``"bn_fc_relu"`` or
            ``"bnneck"``.
        embedding_dim: D, the FC size of the FC heads.
        **kwargs: passed to :class:`~reidkit.models.osnet.OSNetBackbone` (``gate_reduction``).

    Raises:
        ValueError: ``pretrained=True`` or an unknown ``head``.
        reidkit.models.pretrained.WeightsError: the weights file is missing, unsafe or does not
            fit.
    """
    return _in_variant(
        "osnet_ain_x1_0", 1.0, AIN_BLOCKS, num_classes, pretrained, head, embedding_dim, **kwargs
    )


@register_model
def osnet_ain_x0_75(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet-AIN x0.75; arguments as for :func:`osnet_ain_x1_0`.

    Measured at 256 x 128: 1,285,754 parameters (FC-512 head), 571.8 M multiply-adds.
    """
    return _in_variant(
        "osnet_ain_x0_75", 0.75, AIN_BLOCKS, num_classes, pretrained, head, embedding_dim, **kwargs
    )


@register_model
def osnet_ain_x0_5(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet-AIN x0.5; arguments as for :func:`osnet_ain_x1_0`.

    Measured at 256 x 128: 630,034 parameters (FC-512 head), 272.9 M multiply-adds.
    """
    return _in_variant(
        "osnet_ain_x0_5", 0.5, AIN_BLOCKS, num_classes, pretrained, head, embedding_dim, **kwargs
    )


@register_model
def osnet_ain_x0_25(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    head: str = "fc_bn_relu",
    embedding_dim: int = 512,
    **kwargs,
) -> ReIDModel:
    """OSNet-AIN x0.25; arguments as for :func:`osnet_ain_x1_0`.

    Measured at 256 x 128: 201,864 parameters (FC-512 head), 82.3 M multiply-adds.
    """
    return _in_variant(
        "osnet_ain_x0_25", 0.25, AIN_BLOCKS, num_classes, pretrained, head, embedding_dim, **kwargs
    )
