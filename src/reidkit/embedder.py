"""A tracker-facing embedder: person crops in, L2-normalised embeddings out.

:class:`Embedder` wraps a reidkit checkpoint, a registered model with weights, or any ONNX ReID
model, picks the fastest correct backend once (:func:`reidkit.inference.select_backend`:
onnxruntime on CPU when installed and matching torch, torch on CUDA), and embeds crops given as
``H x W x 3`` uint8 arrays (RGB, or BGR as OpenCV frames are), PIL images or file paths. Crops are
prepared exactly as ``reidkit extract`` prepares files (resize to the model's input size with
antialiasing, ImageNet normalisation), so both give the same embeddings for the same pixels.

Example (a tracker loop)::

    embedder = reidkit.Embedder("runs/market/last.pt")
    for frame in frames:                                   # H x W x 3 uint8, BGR from OpenCV
        boxes = detector(frame)                            # (N, 4) x1, y1, x2, y2 in pixels
        emb = embedder.embed_boxes(frame, boxes, color="bgr")   # (N, D), unit rows
        cost = 1.0 - emb @ track_embeddings.T              # cosine distance, smaller is closer
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.transforms import TransformConfig, build_transforms
from .engine.runtime import resolve_device
from .evaluation.features import embed_batch
from .inference.backends import select_backend

COLORS = ("rgb", "bgr")


class Embedder:
    """Embeds person crops with a ReID model; safe to call from several threads.

    Args:
        source: a reidkit checkpoint file (``last.pt``), an ``.onnx`` file, a registered model
            name (``reidkit models``; give ``pretrained``), or a model (``nn.Module``).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        batch_size: crops per forward pass.
        pretrained: weights for a registered model name: a file (a torchreid model-zoo or
            reidkit weights file, see :func:`reidkit.models.create_model`) or ``True``
            (torchvision's ImageNet weights, where the model has them). Required for a name
            unless ``random_weights=True``.
        random_weights: embed with a registered model's random initialisation (tests,
            benchmarks); its embeddings carry no identity information, so it must be asked for.
        input_size: ``(H, W)`` in pixels; default: the checkpoint's ``data.height/width``, the
            ONNX file's metadata, else 256 x 128.
        mean, std, bgr: preprocessing of a third-party ONNX file without metadata (see
            :class:`reidkit.inference.OnnxReIDModel`).
        flip: flip test-time augmentation; default: the checkpoint's ``eval.flip`` (else off).
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
        threads: onnxruntime intra-op threads (``None``: one per core).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: ``source`` is neither a file nor a registered model name (the message lists
            the names); a registered name with neither ``pretrained`` nor ``random_weights=True``,
            or with both; a bad ``batch_size``.
        reidkit.engine.checkpoint.CheckpointError: an unreadable checkpoint.
        reidkit.inference.OnnxModelError: an ONNX file lacking metadata that was not given.
    """

    def __init__(self, source, device: str = "auto", batch_size: int = 64, pretrained=None, input_size=None,
                 mean=None, std=None, bgr: bool | None = None, flip: bool | None = None, backend: str = "auto",
                 threads: int | None = None, random_weights: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = resolve_device(device)
        self.batch_size, self.backend_name, self.threads = batch_size, backend, threads
        weights = (pretrained, random_weights)
        self.model, size, cfg_flip = _load(source, weights, input_size, mean, std, bgr, threads, self.device)
        self.input_size = tuple(int(v) for v in size)
        self.flip = bool(cfg_flip if flip is None else flip)
        self.transform = build_transforms(TransformConfig(height=self.input_size[0], width=self.input_size[1]), train=False)
        self._backend = None
        self._lock = threading.Lock()

    @property
    def embedding_dim(self) -> int | None:
        """D, the embedding size (``None`` for an ONNX file that does not declare it, until the
        first call)."""
        return getattr(self.model, "embedding_dim", None)

    def describe(self) -> str:
        """The backend in use, e.g. ``"onnxruntime (fp32, 2 threads)"`` (``"not started"`` before
        the first call)."""
        return self._backend.describe() if self._backend is not None else "not started"

    def embed(self, crops: Sequence, color: str = "rgb") -> np.ndarray:
        """Embed person crops.

        Args:
            crops: ``H x W x 3`` uint8 numpy arrays, PIL images or image file paths (may mix).
            color: channel order of the numpy arrays, ``"rgb"`` or ``"bgr"`` (OpenCV); PIL
                images and files are read as RGB whatever ``color`` says.

        Returns:
            ``(N, D)`` float32, rows L2-normalised (compare with cosine similarity, larger is
            closer, or Euclidean distance, smaller is closer), in the order of ``crops``.

        Raises:
            ValueError: ``color`` is not ``"rgb"``/``"bgr"``; a crop that is not ``H x W x 3``
                uint8 or has no pixels (the message gives its index).
            reidkit.data.ImageReadError: a file cannot be read.
        """
        if color not in COLORS:
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        crops = list(crops)
        if not crops:
            return np.zeros((0, self.embedding_dim or 0), dtype=np.float32)
        out = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = torch.stack([self._prepare(c, color, start + i) for i, c in enumerate(chunk)])
            out.append(self._run(batch))
        return torch.cat(out).numpy()

    def embed_boxes(self, frame: np.ndarray, boxes_xyxy, color: str = "rgb") -> np.ndarray:
        """Crop detections out of a frame and embed them.

        Args:
            frame: ``H x W x 3`` uint8 image (``color`` gives its channel order).
            boxes_xyxy: ``(N, 4)`` boxes ``x1, y1, x2, y2`` in pixels (``x2, y2`` exclusive).
                Each box is grown to whole pixels (``floor`` of ``x1, y1``, ``ceil`` of
                ``x2, y2``) and clipped to the frame, so boxes partly outside are cut.
            color: ``"rgb"`` or ``"bgr"``.

        Returns:
            ``(N, D)`` float32 L2-normalised rows, one per box, in order.

        Raises:
            ValueError: ``frame`` is not ``H x W x 3`` uint8; ``boxes_xyxy`` is not ``(N, 4)``
                finite numbers; a box is empty after clipping (``x2 <= x1`` or ``y2 <= y1``,
                or entirely outside the frame); the message gives the box index and values.
        """
        _check_frame(frame, "frame")
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.size == 0:
            return self.embed([], color)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
            raise ValueError(f"boxes_xyxy must be (N, 4) finite x1, y1, x2, y2 values, got shape {boxes.shape}")
        return self.embed([_crop(frame, box, i) for i, box in enumerate(boxes)], color)

    # ------------------------------------------------------------------ internals
    def _prepare(self, crop, color: str, index: int) -> Tensor:
        """One crop -> ``(3, H, W)`` float, as ``reidkit extract`` prepares a file."""
        if isinstance(crop, (str, Path)):
            from .data import read_image

            return self.transform(read_image(str(crop)))
        if isinstance(crop, Image.Image):
            return self.transform(crop if crop.mode == "RGB" else crop.convert("RGB"))
        _check_frame(crop, f"crop {index}")
        pixels = crop[..., ::-1] if color == "bgr" else crop
        if not (pixels.flags.c_contiguous and pixels.flags.writeable):
            pixels = np.array(pixels)  # torch wants a writable, contiguous buffer (views of frames are not)
        return self.transform(torch.from_numpy(pixels).permute(2, 0, 1))  # (3, h, w) uint8

    def _run(self, batch: Tensor) -> Tensor:
        with self._lock:
            if self._backend is None:
                self._backend = select_backend(self.model, batch, self.device, self.backend_name, threads=self.threads)
            emb = embed_batch(self._backend, batch, self.flip)
        return nn.functional.normalize(emb.float(), dim=1)  # (B, D)


def _load(source, weights, input_size, mean, std, bgr, threads, device):
    """``(model, input_size, flip)`` from an Embedder ``source``; ``weights`` is
    ``(pretrained, random_weights)``, which only a registered model name takes."""
    if isinstance(source, nn.Module):
        return source.eval(), input_size or getattr(source, "input_size", (256, 128)), False
    path = Path(str(source))
    if path.suffix.lower() == ".onnx":
        from .inference.onnx_model import OnnxReIDModel

        model = OnnxReIDModel(path, input_size=input_size, mean=mean, std=std, bgr=bgr, threads=threads, device=device)
        return model, model.input_size, False
    if path.is_file():
        from .engine.checkpoint import model_from_checkpoint
        from .engine.config import config_from_dict

        model, ckpt = model_from_checkpoint(path)
        cfg = config_from_dict(ckpt.get("config", {}))
        size = input_size or (cfg.data.height, cfg.data.width)
        return model, size, bool(getattr(cfg.eval, "flip", False))
    from .models import list_models

    if str(source) not in list_models():
        raise ValueError(f"Embedder source {str(source)!r} is neither an existing file (a checkpoint or "
                         f".onnx) nor a registered model; registered: {', '.join(list_models())}")
    return _named_model(str(source), *weights), input_size or (256, 128), False


def _named_model(name: str, pretrained, random_weights: bool) -> nn.Module:
    from .models import create_model

    untrained = pretrained is None or pretrained is False
    if random_weights and not untrained:
        raise ValueError(f"Embedder({name!r}): give pretrained or random_weights=True, not both")
    if not random_weights and untrained:
        raise ValueError(
            f"Embedder({name!r}) has no weights: pass pretrained=FILE (a torchreid model-zoo or reidkit "
            "weights file), or random_weights=True for an untrained model (its embeddings mean nothing)")
    return create_model(name, num_classes=0, pretrained=None if random_weights else pretrained).eval()


def _check_frame(image, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{what} must be an H x W x 3 uint8 numpy array, got shape {shape} and dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} has no pixels (shape {image.shape})")


def _crop(frame: np.ndarray, box: np.ndarray, index: int) -> np.ndarray:
    """``frame[y1:y2, x1:x2]`` of a box grown to whole pixels and clipped to the frame."""
    height, width = frame.shape[:2]
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {index} {box.tolist()} is empty inside the {width} x {height} frame "
                         f"(clipped to x {x1}..{x2}, y {y1}..{y2})")
    return frame[y1:y2, x1:x2]
