"""PAUL's positive views: an augmented copy of every image serves as its positive in IPFL.

Yang et al., CVPR 2019, implementation details: random crop of 70-95 % of the image, rotation
up to 10 degrees, brightness, contrast and saturation in 80-120 %. The authors' code
(``src/dataset/market1501.py``) applies all of them in sequence (colour jitter, rotation, crop),
then the usual training transform (flip, resize, normalise); it also jitters hue by 0.1, which the
paper does not mention (``hue`` here, 0 by default).

Built from ``torchvision.transforms.v2``. The crop is ``RandomResizedCrop`` with an area fraction
in ``crop_scale`` and an aspect ratio within ``[crop_scale[0] a, a / crop_scale[0]]`` of the
image's ``a = width / height``, the range the authors' crop (``utils/my_transforms.py``) spans.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from .transforms import IMAGENET_MEAN, IMAGENET_STD


def positive_view_transform(
    height: int = 384,
    width: int = 128,
    crop_scale: tuple[float, float] = (0.7, 0.95),
    degrees: float = 10.0,
    jitter: float = 0.2,
    hue: float = 0.0,
    flip_p: float = 0.5,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> v2.Compose:
    """Transform from a ``PIL.Image`` to a normalised ``(3, height, width)`` float32 positive view.

    Resize to ``height x width``, colour jitter (brightness, contrast and saturation factors
    uniform in ``[1 - jitter, 1 + jitter]``, hue in ``[-hue, hue]``), rotation by an angle
    uniform in ``[-degrees, degrees]`` (corners filled with black), a random crop of an area
    fraction in ``crop_scale`` resized back to ``height x width``, horizontal flip with
    probability ``flip_p``, ImageNet normalisation. Randomness comes from torch's RNG.

    Args:
        height: output height in pixels (384 in the paper).
        width: output width in pixels (128).
        crop_scale: ``(low, high)`` area fraction of the crop, ``0 < low <= high <= 1``.
        degrees: largest rotation in degrees, ``>= 0``.
        jitter: colour jitter strength in ``[0, 1)``.
        hue: hue jitter in ``[0, 0.5]``.
        flip_p: probability of a horizontal flip.
        mean: normalisation mean per RGB channel.
        std: normalisation std per RGB channel.

    Raises:
        ValueError: an argument outside its range.
    """
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
    if degrees < 0 or not 0 <= jitter < 1 or not 0 <= hue <= 0.5 or not 0 <= flip_p <= 1:
        raise ValueError(
            f"need degrees >= 0, 0 <= jitter < 1, 0 <= hue <= 0.5, 0 <= flip_p <= 1; got degrees={degrees}, "
            f"jitter={jitter}, hue={hue}, flip_p={flip_p}"
        )
    size, aspect = (height, width), width / height
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue),
        v2.RandomRotation(degrees),
        v2.RandomResizedCrop(size, scale=(low, high), ratio=(low * aspect, aspect / low), antialias=True),
        v2.RandomHorizontalFlip(flip_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class TwoViews:
    """``TwoViews(anchor_transform, view_transform)(img) -> (anchor, view)``: the image as the
    model usually sees it and its augmented positive, for a batch of B images + B copies.

    Args:
        anchor_transform: e.g. :func:`reidkit.data.transforms.build_transforms` (train).
        view_transform: e.g. :func:`positive_view_transform`.
    """

    def __init__(self, anchor_transform: Callable, view_transform: Callable):
        self.anchor_transform, self.view_transform = anchor_transform, view_transform

    def __call__(self, img):
        return self.anchor_transform(img), self.view_transform(img)

    def __repr__(self) -> str:
        return f"TwoViews(anchor={self.anchor_transform!r}, view={self.view_transform!r})"
