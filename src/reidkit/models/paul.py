"""PatchNet of PAUL (Yang, Yu, Wu, Zheng, "Patch-Based Discriminative Feature Learning for
Unsupervised Person Re-identification", CVPR 2019; reference code github.com/QizeYang/PAUL,
``src/models/patchnet.py``).

::

    x (B, 3, H, W) -> trunk -> fmap (B, C, h, w)
      -> patch generator (STN localisation net) -> theta (B, M, 2, 3)
      -> grid sampling of M patches from fmap -> average pool -> (B, M, C)
      -> M independent branches (1x1 conv + BN) -> raw patch features (B, M, 256)
      -> L2-normalise each patch -> concatenate -> descriptor (B, M * 256)

Values, with their source (paper = CVPR 2019 text, code = the authors' repository):

* ``M = 6`` patches (code: ``self.stripe = 6``, the 36 outputs of ``fc_loc``).
* Initial layout: six full-width horizontal stripes of height 1/6 that tile the map, given by the
  bias of the last localisation FC, whose weight starts at zero (paper, PatchNet section; code:
  ``path_postion``, theta_m = [[1, 0, 0], [0, 1/6, t_m]] with t_m = -5/6, -3/6, ..., 5/6).
* Localisation net (code): conv 3x3 C -> 4096, BN, ReLU, max pool 3 / stride 2 / pad 1, global
  average pool, FC 4096 -> 512, ReLU, FC 512 -> 6 M.
* Patches are sampled from the last trunk map (ResNet-50 conv5 with last stride 1, 24 x 8 at
  384 x 128), at the map's own size (code: ``affine_grid(theta, x.size())``), and average pooled.
* Branch (code ``PatchNetUn.down``): 1x1 conv C -> 256 + BN; the features are L2-normalised per
  patch (``renorm``) and the test descriptor is their concatenation (code ``extract``), so
  ``model(x)`` has norm ``sqrt(M)``.
* Supervised source stage (code ``PatchNet``): the same branch followed by ReLU, one identity
  classifier per patch, loss ``sum_m CE(logits_m, y)``.

Deviations: the localisation conv has padding 1, so maps smaller than 3 x 3 (small
test inputs) work (the code has none: 24 x 8 -> 22 x 6); grid sampling uses
``align_corners=False``, under which the six initial stripes tile the map exactly (the authors
ran PyTorch 0.4.1, whose behaviour was ``align_corners=True``); ``paul_mobilenet_v2`` uses a
smaller localisation net (128 channels, 128 hidden) to fit CPU budgets; the source stage's
per-patch 128-d embedding layers (``new.embedding``, used by their triplet term) are not built:
metric losses act on the descriptor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.nn import functional as F

from . import register_model
from .base import Backbone, ReIDModel, ReIDOutput
from .mobilenet import MobileNetV2Backbone, _torchvision_mobilenet_v2_state
from .pretrained import load_pretrained
from .resnet import ResNetBackbone, _torchvision_resnet50_state


def stripe_thetas(num_patches: int) -> Tensor:
    """The initial patch layout: ``num_patches`` full-width horizontal stripes tiling the map.

    Patch m covers rows ``[m / M, (m + 1) / M)`` of the map's height: ``theta_m = [[1, 0, 0],
    [0, 1 / M, -1 + (2 m + 1) / M]]`` in :func:`torch.nn.functional.affine_grid`'s convention
    (output coordinates in [-1, 1] -> input coordinates). For M = 6 these are the authors'
    ``path_postion`` values.

    Returns:
        ``(M, 2, 3)`` float32.

    Raises:
        ValueError: ``num_patches`` is not a positive integer.
    """
    _check_positive("num_patches", num_patches)
    theta = torch.zeros(num_patches, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0 / num_patches
    theta[:, 1, 2] = -1.0 + (2.0 * torch.arange(num_patches) + 1.0) / num_patches
    return theta


def sample_patches(fmap: Tensor, theta: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Bilinear STN sampling of one patch per image (Jaderberg et al., NeurIPS 2015).

    Output pixel ``(u, v)`` in normalised coordinates ``[-1, 1]^2`` reads the map at
    ``theta @ (u, v, 1)``; ``-1`` and ``1`` are the outer edges of the map
    (``align_corners=False``); points outside read zeros.

    Args:
        fmap: ``(B, C, H, W)`` float feature map.
        theta: ``(B, 2, 3)`` affine transforms.
        size: ``(h, w)`` of the patch; ``None`` samples at the map's own size ``(H, W)``.

    Returns:
        ``(B, C, h, w)`` patches.
    """
    h, w = size if size is not None else fmap.shape[-2:]
    grid = F.affine_grid(theta.to(fmap.dtype), [fmap.shape[0], fmap.shape[1], h, w], align_corners=False)
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def patch_corners(theta: Tensor, height: int, width: int) -> Tensor:
    """Corners of the sampled regions in pixel coordinates of the ``height x width`` input image.

    The map is taken to cover the whole image (exact when the input size is a multiple of the
    trunk's stride), so normalised coordinate ``-1`` is the image's left/top edge and ``1`` its
    right/bottom edge.

    Args:
        theta: ``(B, M, 2, 3)`` patch transforms (e.g. from :meth:`PatchNet.patch_thetas`).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(B, M, 4, 2)`` float ``(x, y)`` pixel coordinates of the corners (top-left, top-right,
        bottom-right, bottom-left of the patch); a rotated or sheared patch is a parallelogram.
    """
    square = theta.new_tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    norm = square @ theta.transpose(-1, -2)  # (B, M, 4, 2) normalised (x, y)
    scale = theta.new_tensor([width, height])
    return (norm + 1.0) / 2.0 * scale


class PatchGenerator(nn.Module):
    """PAUL's patch generation network: an STN localisation net predicting M affine transforms.

    Conv 3x3 (``in_channels -> loc_channels``, padding 1) + BN + ReLU + max pool (3, stride 2,
    pad 1), global average pool, FC ``loc_channels -> loc_hidden`` + ReLU, FC ``loc_hidden ->
    6 M``. The last FC's weight starts at zero and its bias at ``init_theta``, so every image
    starts with the same layout and the patches differ only by that bias (paper, PatchNet section).

    Args:
        in_channels: C, channels of the trunk map.
        num_patches: M.
        loc_channels: channels of the localisation conv (4096 in the authors' code).
        loc_hidden: width of the hidden FC (512 in the authors' code).
        init_theta: ``(M, 2, 3)`` initial layout; ``None`` for :func:`stripe_thetas`.

    Raises:
        ValueError: a size is not a positive integer, or ``init_theta`` is not ``(M, 2, 3)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_patches: int = 6,
        loc_channels: int = 4096,
        loc_hidden: int = 512,
        init_theta: Tensor | None = None,
    ):
        super().__init__()
        for name, value in (("num_patches", num_patches), ("loc_channels", loc_channels), ("loc_hidden", loc_hidden)):
            _check_positive(name, value)
        theta = stripe_thetas(num_patches) if init_theta is None else torch.as_tensor(init_theta, dtype=torch.float32)
        if tuple(theta.shape) != (num_patches, 2, 3):
            raise ValueError(f"init_theta must be ({num_patches}, 2, 3), got {tuple(theta.shape)}")
        self.num_patches = num_patches
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, loc_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(loc_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.fc = nn.Sequential(
            nn.Linear(loc_channels, loc_hidden), nn.ReLU(inplace=True), nn.Linear(loc_hidden, 6 * num_patches)
        )
        nn.init.kaiming_normal_(self.localization[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc[2].weight)
        with torch.no_grad():
            self.fc[2].bias.copy_(theta.flatten())

    def forward(self, fmap: Tensor) -> Tensor:
        """``fmap: (B, C, h, w)`` -> ``theta: (B, M, 2, 3)``."""
        z = self.localization(fmap).mean(dim=(2, 3))  # (B, loc_channels)
        return self.fc(z).view(-1, self.num_patches, 2, 3)


class PatchHead(nn.Module):
    """M independent branches (1x1 conv + BN on the pooled patch) and optional classifiers.

    Args:
        in_channels: C, channels of a pooled patch.
        num_patches: M.
        patch_dim: d, size of every patch feature (256 in the paper).
        num_classes: identities of the supervised stage; 0 for no classifiers. Patch m's logits
            are ``classifiers[m](ReLU(raw_m))``, as the authors' supervised ``PatchNet``.
    """

    def __init__(self, in_channels: int, num_patches: int, patch_dim: int = 256, num_classes: int = 0):
        super().__init__()
        _check_positive("patch_dim", patch_dim)
        self.out_dim = num_patches * patch_dim
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, patch_dim, kernel_size=1), nn.BatchNorm2d(patch_dim))
            for _ in range(num_patches)
        )
        self.classifiers = (
            nn.ModuleList(nn.Linear(patch_dim, num_classes) for _ in range(num_patches)) if num_classes > 0 else None
        )

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor | None]:
        """``pooled: (B, M, C)`` -> ``(raw patch features (B, M, d), logits (B, M, K) or None)``."""
        raw = torch.stack([b(pooled[:, m, :, None, None]).flatten(1) for m, b in enumerate(self.branches)], 1)
        if self.classifiers is None:
            return raw, None
        logits = torch.stack([clf(F.relu(raw[:, m])) for m, clf in enumerate(self.classifiers)], 1)
        return raw, logits


class PatchNetOutput(NamedTuple):
    """Everything :meth:`PatchNet.forward_patches` computes.

    Attributes:
        embedding: ``(B, M * d)`` the descriptor, concatenated L2-normalised patch features
            (Euclidean or cosine distance, smaller is closer).
        patch_features: ``(B, M, d)`` L2-normalised patch features (PEDAL's input).
        patch_logits: ``(B, M, K)`` identity logits of every patch's classifier, or ``None``.
        theta: ``(B, M, 2, 3)`` the sampled patches' affine transforms.
        feature_maps: the trunk's stage outputs, shallow to deep.
    """

    embedding: Tensor
    patch_features: Tensor
    patch_logits: Tensor | None
    theta: Tensor
    feature_maps: tuple[Tensor, ...]


class PatchNet(ReIDModel):
    """PAUL's PatchNet on a reidkit trunk (see the module docstring for the architecture).

    * ``model(x)`` -> ``(B, M * d)`` descriptor (per-patch L2-normalised, concatenated).
    * ``forward_train(x)`` -> :class:`ReIDOutput` with ``embedding = feature`` = the descriptor,
      ``local_feature: (B, M, d)`` the normalised patch features, and ``logits: (B, K)`` the mean
      of the M patch classifiers' logits (``None`` without classifiers). The paper's supervised
      loss needs the per-patch logits: use :meth:`forward_patches`.
    * :meth:`freeze_patch_generator` for the unsupervised target stage.

    Args:
        backbone: the trunk; patches come from its last stage.
        num_classes: identities of the supervised stage (0: no classifiers).
        num_patches: M (6 in the paper).
        patch_dim: d (256 in the paper).
        loc_channels: channels of the localisation conv.
        loc_hidden: width of the localisation hidden FC.
        init_theta: ``(M, 2, 3)`` initial layout; ``None`` for :func:`stripe_thetas`.
        patch_size: ``(h, w)`` at which patches are sampled; ``None`` for the map's own size
            (the authors' choice).

    Raises:
        ValueError: a size is not a positive integer or ``init_theta`` has the wrong shape.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 0,
        num_patches: int = 6,
        patch_dim: int = 256,
        loc_channels: int = 4096,
        loc_hidden: int = 512,
        init_theta: Tensor | None = None,
        patch_size: tuple[int, int] | None = None,
    ):
        channels = backbone.out_channels[-1]
        super().__init__(backbone, PatchHead(channels, num_patches, patch_dim, num_classes))
        self.patch_generator = PatchGenerator(channels, num_patches, loc_channels, loc_hidden, init_theta)
        self.num_patches, self.patch_dim = num_patches, patch_dim
        self.patch_size = None if patch_size is None else (int(patch_size[0]), int(patch_size[1]))
        self.generator_frozen = False

    @property
    def num_classes(self) -> int:
        clfs = self.head.classifiers
        return 0 if clfs is None else clfs[0].out_features

    def patch_thetas(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> the M affine transforms ``(B, M, 2, 3)`` (for pictures)."""
        return self.patch_generator(self.backbone(x)[-1])

    def forward_patches(self, x: Tensor) -> PatchNetOutput:
        """``x: (B, 3, H, W)`` -> :class:`PatchNetOutput` (descriptor, patches, logits, thetas)."""
        maps = self.backbone(x)
        fmap = maps[-1]  # (B, C, h, w)
        theta = self.patch_generator(fmap)  # (B, M, 2, 3)
        pooled = torch.stack(
            [sample_patches(fmap, theta[:, m], self.patch_size).mean(dim=(2, 3)) for m in range(self.num_patches)], 1
        )  # (B, M, C)
        raw, logits = self.head(pooled)  # (B, M, d), (B, M, K)
        feats = F.normalize(raw, dim=2)
        return PatchNetOutput(feats.flatten(1), feats, logits, theta, tuple(maps))

    def forward_train(self, x: Tensor) -> ReIDOutput:
        """``x: (B, 3, H, W)`` -> :class:`ReIDOutput` (see the class docstring)."""
        out = self.forward_patches(x)
        logits = None if out.patch_logits is None else out.patch_logits.mean(dim=1)  # (B, K)
        return ReIDOutput(out.embedding, out.embedding, logits, out.feature_maps, out.patch_features)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` -> descriptor ``(B, M * d)`` float, norm ``sqrt(M)``."""
        return self.forward_patches(x).embedding

    def freeze_patch_generator(self, frozen: bool = True) -> PatchNet:
        """Freeze (or unfreeze) the patch generator, as in PAUL's unsupervised target stage.

        Frozen: its parameters get ``requires_grad=False`` and it stays in eval mode (BN uses its
        running statistics and stops updating them) even when ``model.train()`` is called.
        ``requires_grad`` is not saved in a state dict: call this again after loading a
        checkpoint. Returns ``self``.
        """
        self.generator_frozen = bool(frozen)
        self.patch_generator.requires_grad_(not frozen)
        self.patch_generator.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> PatchNet:
        """``nn.Module.train``, keeping a frozen patch generator in eval mode."""
        super().train(mode)
        if self.generator_frozen:
            self.patch_generator.eval()
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for per-part learning rates: ``backbone``, ``patch_generator`` and
        ``head`` (branches and classifiers)."""
        return {
            "backbone": list(self.backbone.parameters()),
            "patch_generator": list(self.patch_generator.parameters()),
            "head": list(self.head.parameters()),
        }


PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def draw_patches(
    images: Sequence[Image.Image], corners: Tensor, input_size: tuple[int, int], cell: tuple[int, int] = (256, 128)
) -> Image.Image:
    """A row of pictures with the M sampled regions outlined in distinct colours (PAUL Fig. 6).

    Drawn with Pillow (already a dependency). Save with :func:`reidkit.fileio.atomic_write`, e.g.
    ``atomic_write(path, lambda f: picture.save(f, format="PNG"))``.

    Args:
        images: B pictures (any size; each is resized to ``cell``).
        corners: ``(B, M, 4, 2)`` ``(x, y)`` corners in pixels of the model's input size (from
            :func:`patch_corners`).
        input_size: ``(H, W)`` in pixels of the model's input, the frame of ``corners``.
        cell: ``(height, width)`` in pixels of every picture in the grid.

    Returns:
        An RGB image, ``B`` cells side by side with a 4-pixel margin.

    Raises:
        ValueError: no images, or ``corners`` is not ``(len(images), M, 4, 2)``.
    """
    corners = torch.as_tensor(corners, dtype=torch.float64).cpu()
    if not images or corners.ndim != 4 or corners.shape[0] != len(images) or corners.shape[2:] != (4, 2):
        raise ValueError(f"need B >= 1 images and (B, M, 4, 2) corners, got {len(images)} and {tuple(corners.shape)}")
    (h, w), pad = cell, 4
    scale = torch.tensor([w / input_size[1], h / input_size[0]], dtype=torch.float64)
    canvas = Image.new("RGB", (len(images) * (w + pad) + pad, h + 2 * pad), "white")
    for i, img in enumerate(images):
        tile = img.convert("RGB").resize((w, h), Image.BILINEAR)
        draw = ImageDraw.Draw(tile)  # drawing on the tile clips patches reaching outside it
        for m, quad in enumerate(corners[i] * scale):  # (4, 2) in cell pixels
            draw.polygon([(float(x), float(y)) for x, y in quad], outline=PALETTE[m % len(PALETTE)], width=2)
        canvas.paste(tile, (pad + i * (w + pad), pad))
    return canvas


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@register_model
def paul_resnet50(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    last_stride: int = 1,
    num_patches: int = 6,
    patch_dim: int = 256,
    loc_channels: int = 4096,
    loc_hidden: int = 512,
    patch_size: tuple[int, int] | None = None,
) -> PatchNet:
    """PatchNet on ResNet-50 with last stride 1, the paper's configuration.

    Args:
        num_classes: identities of the supervised source stage (0: no classifiers).
        pretrained: ``None``, ``True`` (torchvision ImageNet weights) or a local state dict path
            for the trunk.
        last_stride: 1 (paper) or 2.
        num_patches: M (6).
        patch_dim: d (256).
        loc_channels: localisation conv channels (4096, the authors' code).
        loc_hidden: localisation hidden FC width (512).
        patch_size: ``(h, w)`` of the sampled patches; ``None`` for the map's size.
    """
    backbone = ResNetBackbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_resnet50_state)
    return PatchNet(backbone, num_classes, num_patches, patch_dim, loc_channels, loc_hidden, patch_size=patch_size)


@register_model
def paul_mobilenet_v2(
    num_classes: int = 0,
    pretrained: bool | str | Path | None = None,
    last_stride: int = 1,
    num_patches: int = 6,
    patch_dim: int = 256,
    loc_channels: int = 128,
    loc_hidden: int = 128,
    patch_size: tuple[int, int] | None = None,
) -> PatchNet:
    """PatchNet on MobileNetV2 for CPU budgets (last stride 1: a 24 x 8 map at 384 x 128).

    The localisation net is narrower than the paper's (128 channels, 128 hidden instead of 4096
    and 512) to keep it smaller than the trunk. Arguments as for :func:`paul_resnet50`;
    ``pretrained`` takes torchvision ``features.*`` key names (e.g.
    ``../shared/weights/mobilenet_v2_imagenet_features.pth``).
    """
    backbone = MobileNetV2Backbone(last_stride=last_stride)
    load_pretrained(backbone, pretrained, _torchvision_mobilenet_v2_state)
    return PatchNet(backbone, num_classes, num_patches, patch_dim, loc_channels, loc_hidden, patch_size=patch_size)
