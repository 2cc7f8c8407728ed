"""Batched feature extraction through the inference seam (torch or onnxruntime).

Every batch goes through one backend (:func:`reidkit.inference.select_backend`): on CPU the
model exported to ONNX and run by onnxruntime when that is installed and matches torch on the
first batch, torch otherwise; on CUDA torch. The chosen backend is logged at INFO on the
``reidkit.inference`` logger as ``extract: backend onnxruntime (fp32, 2 threads)`` and returned
by :func:`last_backend`.

Flip test-time augmentation (``flip=True``): the embedding of an image is the mean of the
model's raw (un-normalised) embeddings of the image and of its horizontal mirror; each view is
*not* normalised before averaging. The mean is L2-normalised afterwards wherever embeddings are
normalised (``eval.normalize``, on by default; the :class:`~reidkit.Embedder` always), the same
in every backend.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..inference.backends import select_backend

_log = logging.getLogger("reidkit.inference")
_last = threading.local()

AUTO_MIN_IMAGES = 256
"""Below this many images ``backend="auto"`` runs torch: exporting the model (1-6 s) would cost
more than onnxruntime saves on fewer images (and tests on small sets stay on torch)."""


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


def last_backend() -> str | None:
    """``describe()`` of the backend the last :func:`extract_features` call in this thread ran,
    e.g. ``"onnxruntime (fp32, 2 threads)"``; ``None`` before any call."""
    return getattr(_last, "description", None)


def embed_batch(backend, images: Tensor, flip: bool = False) -> Tensor:
    """``backend(images)``, or with ``flip`` the mean of it and of the mirrored images.

    Args:
        backend: maps ``(B, 3, H, W)`` to ``(B, D)``.
        images: ``(B, 3, H, W)`` float.
        flip: flip test-time augmentation (mean of raw embeddings, not normalised per view).

    Returns:
        ``(B, D)`` float32.
    """
    emb = backend(images)
    if flip:
        emb = (emb + backend(images.flip(-1))) / 2  # mean of the two views, (B, D)
    return emb


def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = False,
    with_local: bool = False,
    flip: bool = False,
    backend: str = "auto",
) -> Features:
    """Embed every image a loader yields.

    Args:
        model: a reidkit model or an :class:`~reidkit.inference.OnnxReIDModel`; maps
            ``(B, 3, H, W)`` to ``(B, D)``; put in eval mode here.
        loader: yields ``(images (B, 3, H, W), pids (B,), camids (B,), ...)`` in a fixed order.
        device: where a torch model runs.
        amp: torch mixed precision; ``None`` lets the backend choice decide (see
            :func:`reidkit.inference.select_backend`); ``True`` forces torch with autocast.
        channels_last: torch NHWC memory layout; ``None`` goes with ``amp``.
        progress: show a tqdm bar.
        with_local: also keep ``forward_train(x).local_feature`` (models with a local branch);
            runs torch.
        flip: flip test-time augmentation (see the module docstring).
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"``. ``"auto"`` runs torch for fewer
            than :data:`AUTO_MIN_IMAGES` images.

    Returns:
        :class:`Features`, rows in loader order, float32 whatever the backend.

    Raises:
        reidkit.inference.InferenceError: bad ``backend``, or a forced backend that cannot run.
    """
    device = torch.device(device)
    small = with_local or _num_images(loader) < AUTO_MIN_IMAGES
    if backend == "auto" and small and not getattr(model, "is_onnx", False):
        backend = "torch"
    runner = None
    feats, local, pids, camids = [], [], [], []
    try:
        for batch in tqdm(loader, desc="extract", disable=not progress, leave=False):
            images = batch[0]
            if runner is None:
                runner = _start(model, images, device, backend, amp, channels_last, with_local)
            if with_local:
                emb, loc = _local_batch(runner, images, flip)
                local.append(loc)
            else:
                emb = embed_batch(runner, images, flip)
            feats.append(emb.float().cpu())
            pids.append(np.asarray(batch[1]))
            camids.append(np.asarray(batch[2]))
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()
    if not feats:
        raise ValueError("extract_features: the loader yielded no images")
    return Features(
        torch.cat(feats),
        np.concatenate(pids).astype(np.int64),
        np.concatenate(camids).astype(np.int64),
        torch.cat(local) if with_local else None,
    )


def _start(model, images: Tensor, device, backend: str, amp, channels_last, with_local: bool):
    if with_local and getattr(model, "is_onnx", False):
        model.forward_train(images)  # raises the clear "no local features" error
    runner = select_backend(model.eval(), images, device, backend, amp, channels_last)
    _last.description = runner.describe()
    _log.info("extract: backend %s", _last.description)
    return runner


def _local_batch(runner, images: Tensor, flip: bool) -> tuple[Tensor, Tensor]:
    emb, loc = runner.forward_local(images)
    if flip:
        emb_f, loc_f = runner.forward_local(images.flip(-1))
        emb, loc = (emb + emb_f) / 2, (loc + loc_f) / 2  # stripes are rows: a mirror keeps them
    return emb, loc


def _num_images(loader) -> int:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return AUTO_MIN_IMAGES  # unknown size: let auto decide
