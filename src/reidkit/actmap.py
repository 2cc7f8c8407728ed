"""Activation maps: where a stage of the network responds (AMSFL Fig. 3, following OSNet).

Paper: X. Wang et al., "Adversarial Multi-scale Feature Learning for Person Re-identification",
arXiv:2012.14061, 2020, Sec. IV-C: "the activation maps are computed as the sum of
absolute-valued feature maps along the channel dimension followed by a spatial normalization".

The colour map is a jet-like ramp written with numpy, and pictures are drawn with Pillow (already a
dependency), rather than with matplotlib, to keep the install small.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .fileio import save_picture


def activation_maps(model: nn.Module, images: Tensor, stage: int) -> Tensor:
    """Per-image activation maps of one backbone stage, upsampled to the input size.

    ``A = sum_c |F_c|`` over the stage output's channels, bilinearly upsampled to ``H x W``
    (``align_corners=False``), then min-max normalised per image: the weakest pixel is 0 and the
    strongest 1 (a constant map becomes all zeros). The model runs in eval mode without
    gradients; its previous train/eval mode is restored.

    Args:
        model: a :class:`reidkit.models.ReIDModel` (anything with ``forward_train(x)``
            returning ``feature_maps``).
        images: ``(B, 3, H, W)`` float, normalised as for the model.
        stage: 1-based stage number, ``1..len(feature_maps)``; stage s is ``feature_maps[s-1]``
            (for ResNet-50, 4 is conv5, the "high-level feature maps" of Fig. 3).

    Returns:
        ``(B, H, W)`` float in [0, 1], larger = stronger response.

    Raises:
        ValueError: ``images`` not ``(B, 3, H, W)`` or ``stage`` out of range.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.forward_train(images).feature_maps
    finally:
        model.train(was_training)
    if not 1 <= stage <= len(maps):
        raise ValueError(f"stage must be in 1..{len(maps)} (1-based), got {stage}")
    amap = maps[stage - 1].abs().sum(dim=1, keepdim=True)  # (B, 1, h, w)
    amap = F.interpolate(amap, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    return _minmax_per_image(amap.float())


def _minmax_per_image(amap: Tensor) -> Tensor:
    """``(B, H, W)`` -> ``(B, H, W)`` scaled to [0, 1] per image; constant images -> 0."""
    flat = amap.flatten(1)  # (B, H * W)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return out.view_as(amap)


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colour ramp (dark blue -> blue -> cyan -> yellow -> red -> dark red).

    Each channel is a clipped tent, ``clip(1.5 - |4 v - k|, 0, 1)`` with k = 3 (red), 2 (green),
    1 (blue).

    Args:
        values: ``(...)`` floats in [0, 1] (clipped).

    Returns:
        ``(..., 3)`` uint8 RGB.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]  # (..., 1)
    centres = np.array([3.0, 2.0, 1.0])  # R, G, B
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)  # (..., 3)
    return np.round(rgb * 255).astype(np.uint8)


def overlay(image: Image.Image, amap: Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a jet-coloured activation map over an image.

    Args:
        image: the picture (any size); converted to RGB.
        amap: ``(h, w)`` values in [0, 1]; bilinearly resized to the image's size.
        alpha: weight of the colour map (0: image only, 1: map only).

    Returns:
        RGB image of ``image``'s size: ``(1 - alpha) * image + alpha * jet(amap)``.

    Raises:
        ValueError: ``amap`` not 2-D or ``alpha`` outside [0, 1].
    """
    amap = amap.detach().cpu().numpy() if isinstance(amap, Tensor) else np.asarray(amap)
    if amap.ndim != 2:
        raise ValueError(f"amap must be (h, w), got shape {amap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    resized = Image.fromarray(amap.astype(np.float32)).resize(image.size, Image.BILINEAR)
    heat = jet(np.asarray(resized))  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    mixed = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.round(mixed).astype(np.uint8))


def actmap_grid(
    images: Sequence[Image.Image], maps: Tensor | np.ndarray, path: str | Path, pad: int = 4
) -> Path:
    """Write a PNG with the input images on the top row and their overlays below.

    Args:
        images: B pictures; each cell takes the size of ``maps``' ``H x W`` (images are resized).
        maps: ``(B, H, W)`` activation maps in [0, 1] (e.g. from :func:`activation_maps`).
        path: PNG file to write (parent folders are created).
        pad: white margin between cells, in pixels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no images, or ``maps`` not ``(len(images), H, W)``.
    """
    maps = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if not images or maps.ndim != 3 or maps.shape[0] != len(images):
        raise ValueError(f"need B >= 1 images and (B, H, W) maps, got {len(images)} and {maps.shape}")
    h, w = maps.shape[1:]
    canvas = Image.new("RGB", (len(images) * (w + pad) + pad, 2 * (h + pad) + pad), "white")
    for i, (img, amap) in enumerate(zip(images, maps)):
        cell = img.convert("RGB").resize((w, h), Image.BILINEAR)
        x = pad + i * (w + pad)
        canvas.paste(cell, (x, pad))
        canvas.paste(overlay(cell, amap), (x, 2 * pad + h))
    return save_picture(canvas, path)
