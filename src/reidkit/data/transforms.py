"""Image transforms built from ``torchvision.transforms.v2``.

Standard ReID augmentation (METHODS.md section 1): resize to ``height x width`` (default
256x128), random horizontal flip, pad 10 + random crop, ImageNet mean/std normalisation,
random erasing (Zhong et al., AAAI 2020, p=0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TransformConfig:
    """Augmentation settings.

    Attributes:
        height: output height in pixels.
        width: output width in pixels.
        flip_p: probability of a horizontal flip (train only).
        pad: padding in pixels before the random crop back to ``height x width``; 0 disables.
        random_erasing_p: probability of random erasing (train only); 0 disables.
        color_jitter: brightness/contrast/saturation jitter strength; 0 disables.
        mean: normalisation mean per RGB channel.
        std: normalisation std per RGB channel.
        resize: ``(H, W)`` to resize to first, then crop to ``height x width`` (random crop for
            training, centre crop for testing), as MSP-CNN's 160x64 -> 144x56; ``None`` resizes
            straight to ``height x width``.
    """

    height: int = 256
    width: int = 128
    flip_p: float = 0.5
    pad: int = 10
    random_erasing_p: float = 0.5
    color_jitter: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: tuple[int, int] | None = None


def build_transforms(cfg: TransformConfig | None = None, train: bool = True) -> v2.Compose:
    """Transform from a ``PIL.Image`` to a normalised float tensor ``(3, height, width)``.

    Args:
        cfg: settings (defaults: 256x128, flip 0.5, pad 10, random erasing 0.5).
        train: include the random augmentations; otherwise only resize + normalise.
    """
    cfg = cfg or TransformConfig()
    size = (cfg.height, cfg.width)
    ops: list = [v2.ToImage()]
    if cfg.resize is None:
        ops.append(v2.Resize(size, antialias=True))
    else:
        crop = v2.RandomCrop(size) if train else v2.CenterCrop(size)
        ops += [v2.Resize(tuple(cfg.resize), antialias=True), crop]
    if train:
        if cfg.flip_p > 0:
            ops.append(v2.RandomHorizontalFlip(cfg.flip_p))
        if cfg.pad > 0:
            ops += [v2.Pad(cfg.pad), v2.RandomCrop(size)]
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)]
    if train and cfg.random_erasing_p > 0:
        ops.append(v2.RandomErasing(p=cfg.random_erasing_p, value=0))
    return v2.Compose(ops)
