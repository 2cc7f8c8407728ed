"""Batched feature extraction under ``torch.inference_mode``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine.runtime import autocast, cpu_has_native_bf16


class Features(NamedTuple):
    """Embeddings of a split with their labels.

    Attributes:
        features: ``(N, D)`` float32 CPU tensor.
        pids: ``(N,)`` int64 numpy array.
        camids: ``(N,)`` int64 numpy array.
        local: ``(N, S, C_l)`` float32 part features (AlignedReID stripes), or ``None``.
    """

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    local: torch.Tensor | None = None


def fast_cpu_defaults(device: torch.device) -> tuple[bool, bool]:
    """``(amp, channels_last)`` for inference on ``device``.

    On a CPU with native bfloat16 (AMX / AVX512-BF16) both are on: ``benchmarks/bench_models.py``
    measured them faster there (see docs/benchmarks.md). Elsewhere on CPU both are off; on CUDA
    float16 autocast with channels-last.
    """
    if device.type == "cuda":
        return True, True
    native = cpu_has_native_bf16()
    return native, native


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = False,
    with_local: bool = False,
) -> Features:
    """Embed every image a loader yields.

    Args:
        model: maps ``(B, 3, H, W)`` to ``(B, D)``; put in eval mode here.
        loader: yields ``(images (B, 3, H, W), pids (B,), camids (B,), ...)`` in a fixed order.
        device: where to run the model.
        amp: mixed precision; ``None`` picks :func:`fast_cpu_defaults`.
        channels_last: NHWC memory layout; ``None`` picks :func:`fast_cpu_defaults`.
        progress: show a tqdm bar.
        with_local: also keep ``forward_train(x).local_feature`` (models with a local branch).

    Returns:
        :class:`Features`, rows in loader order, float32 whatever the autocast dtype.
    """
    device = torch.device(device)
    auto_amp, auto_cl = fast_cpu_defaults(device)
    amp = auto_amp if amp is None else amp
    channels_last = auto_cl if channels_last is None else channels_last
    model = model.eval().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    feats, local, pids, camids = [], [], [], []
    for batch in tqdm(loader, desc="extract", disable=not progress, leave=False):
        images = batch[0].to(device, non_blocking=True).contiguous(memory_format=fmt)
        with autocast(device, amp):
            if with_local:
                out = model.forward_train(images)
                emb = out.embedding
                local.append(out.local_feature.float().cpu())
            else:
                emb = model(images)
        feats.append(emb.float().cpu())
        pids.append(np.asarray(batch[1]))
        camids.append(np.asarray(batch[2]))
    model.to(memory_format=torch.contiguous_format)
    return Features(
        torch.cat(feats),
        np.concatenate(pids).astype(np.int64),
        np.concatenate(camids).astype(np.int64),
        torch.cat(local) if with_local else None,
    )
