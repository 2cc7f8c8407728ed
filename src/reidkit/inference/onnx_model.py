"""An ONNX ReID model file that looks like a reidkit model to the rest of reidkit.

:class:`OnnxReIDModel` is callable on a CPU float tensor ``(B, 3, H, W)`` and returns ``(B, D)``
float32 embeddings, ignores ``.eval()``/``.to(device)`` (it has no parameters), and carries its
preprocessing as attributes (``input_size``, ``mean``, ``std``, ``color``, ``output_normalized``,
``name``), so :func:`reidkit.evaluation.features.extract_features` runs it unchanged.

Input convention. Like every reidkit model, ``model(x)`` takes reidkit's test-time input: RGB,
pixels scaled to [0, 1], then normalised with the ImageNet mean/std
(:data:`reidkit.data.transforms.IMAGENET_MEAN`/``IMAGENET_STD``), resized to ``input_size``.
The file's own convention (its ``mean``/``std``, RGB or BGR) is applied inside ``forward`` as an
exact per-channel affine map and channel permutation, so callers only need ``input_size``
(``cfg.data.height/width``). For reidkit's own exports and for torchreid/boxmot OSNet exports
(RGB, ImageNet statistics) that map is the identity and is skipped.

Metadata (``model.metadata_props``, all values strings), written by
:func:`reidkit.onnx_export.export_onnx`:

=====================  =======================================================================
``input_height``       H in pixels
``input_width``        W in pixels
``mean``, ``std``      JSON lists of 3 floats in [0, 1] pixel units, in the channel order the
                       network takes (B, G, R for a BGR model); a network fed raw 0-255 pixels
                       has ``mean`` 0 and ``std`` 1/255
``color_order``        ``"rgb"`` or ``"bgr"``
``embedding_dim``      D
``output_normalized``  ``"true"`` when the graph L2-normalises its output
``model_name``         registered reidkit model name (or the file's stem)
``reidkit_version``    reidkit version that wrote the file
``precision``          ``"fp32"``, ``"fp16"`` or ``"int8"``
=====================  =======================================================================

A third-party file without this metadata needs ``input_size`` (unless its graph has fixed
``H, W``), ``mean`` and ``std`` from the caller (``--input-size``, ``--mean``, ``--std``,
``--bgr``); a missing one raises :class:`OnnxModelError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .backends import InferenceError, OnnxRuntimeBackend

META_KEYS = (
    "input_height", "input_width", "mean", "std", "color_order", "embedding_dim",
    "output_normalized", "model_name", "reidkit_version", "precision",
)


class OnnxModelError(InferenceError):
    """An ONNX file's metadata is missing or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Preprocessing:
    """How a network wants its input.

    Attributes:
        input_size: ``(H, W)`` in pixels.
        mean: per-channel mean in [0, 1] pixel units, in the network's channel order.
        std: per-channel std in [0, 1] pixel units, in the network's channel order.
        color: ``"rgb"`` or ``"bgr"``, the channel order of the network's input.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "rgb"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded).

    Raises:
        FileNotFoundError: no such file.
        OnnxModelError: not an ONNX file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise OnnxModelError(f"{str(path)!r} is not a readable ONNX file: {err}") from None
    return {p.key: p.value for p in proto.metadata_props}


class OnnxReIDModel(nn.Module):
    """An ONNX embedding model run by onnxruntime, with reidkit's model interface.

    Args:
        path: the ``.onnx`` file.
        input_size: ``(H, W)`` in pixels; overrides the metadata, but not a graph with fixed
            ``H, W`` (a different size is refused at load; a graph with dynamic ``H, W`` takes any).
        mean: 3 floats in [0, 1] pixel units (network channel order); overrides the metadata.
        std: 3 floats; overrides the metadata.
        bgr: the network takes BGR input (``True``) or RGB (``False``); ``None`` uses the
            metadata, else RGB.
        threads: onnxruntime intra-op threads (``None``: one per core).
        device: ``"cuda"`` uses onnxruntime's CUDA provider when installed.

    Attributes:
        name: ``model_name`` from the metadata, else the file's stem.
        input_size, mean, std, color: see :class:`Preprocessing` (the file's own convention).
        output_normalized: the graph L2-normalises its output.
        embedding_dim: D (from the metadata or the graph's output shape; ``None`` if neither).
        batch_size: the graph's fixed batch size, ``None`` when dynamic.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` (metadata) or ``"unknown"``.
        metadata: the raw ``metadata_props``.

    Raises:
        FileNotFoundError: no such file.
        OnnxModelError: metadata missing for something not given (names the flag to pass), a
            value that does not parse, an ``input_size`` that contradicts the graph's fixed
            ``H, W`` (names ``--input-size`` and both sizes), or a graph input that is not
            ``(B, 3, H, W)``.
    """

    is_onnx = True

    def __init__(self, path: str | Path, input_size=None, mean=None, std=None, bgr: bool | None = None,
                 threads: int | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.path = str(path)
        self.metadata = read_metadata(path)
        try:
            self.backend = OnnxRuntimeBackend(self.path, threads=threads, device=device)
        except InferenceError as err:
            raise OnnxModelError(f"{self.path!r}: {err}") from None
        meta = self.metadata
        self.name = meta.get("model_name") or Path(path).stem
        self.precision = meta.get("precision", "unknown")
        self.backend.precision = self.precision
        self.prep = self._preprocessing(input_size, mean, std, bgr)
        self.input_size, self.mean, self.std, self.color = (
            self.prep.input_size, self.prep.mean, self.prep.std, self.prep.color)
        self.output_normalized = meta.get("output_normalized", "false").lower() == "true"
        self.embedding_dim = self._embedding_dim()
        self.batch_size = self.backend.batch_size
        self._perm, self._scale, self._shift = _affine(self.prep)

    # ------------------------------------------------------------------ metadata
    def _preprocessing(self, input_size, mean, std, bgr) -> Preprocessing:
        meta, missing = self.metadata, []
        if input_size is not None:
            self._check_against_graph(_pair(input_size, self.path, "input size"))
        size = input_size if input_size is not None else self._meta_size()
        if size is None:
            missing.append("--input-size H W (input_height/input_width)")
        if mean is None and "mean" not in meta:
            missing.append("--mean R G B")
        if std is None and "std" not in meta:
            missing.append("--std R G B")
        if missing:
            raise OnnxModelError(
                f"{self.path!r} carries no reidkit metadata for {', '.join(missing)}; pass them (and "
                "--bgr if it takes BGR input). torchreid/boxmot OSNet exports: --input-size 256 128 "
                "--mean 0.485 0.456 0.406 --std 0.229 0.224 0.225")
        color = ("bgr" if bgr else "rgb") if bgr is not None else meta.get("color_order", "rgb").lower()
        if color not in ("rgb", "bgr"):
            raise OnnxModelError(f"{self.path!r}: metadata color_order is {color!r}; expected 'rgb' or 'bgr'")
        return Preprocessing(
            _pair(size, self.path, "input size"),
            _triple(mean if mean is not None else _json(meta["mean"], self.path, "mean"), self.path, "mean"),
            _triple(std if std is not None else _json(meta["std"], self.path, "std"), self.path, "std", positive=True),
            color,
        )

    def _check_against_graph(self, size: tuple[int, int]) -> None:
        """Refuse an input size that contradicts the graph's fixed ``H, W`` (dynamic: any)."""
        fixed = self.backend.input_size
        if fixed is not None and tuple(fixed) != size:
            raise OnnxModelError(
                f"{self.path!r}: --input-size {size[0]} {size[1]} contradicts the graph's fixed input size "
                f"{fixed[0]} x {fixed[1]} (H x W); give --input-size {fixed[0]} {fixed[1]} or leave it out")

    def _meta_size(self):
        meta = self.metadata
        if "input_height" in meta and "input_width" in meta:
            return meta["input_height"], meta["input_width"]
        return self.backend.input_size  # fixed H, W in the graph, or None

    def _embedding_dim(self) -> int | None:
        if "embedding_dim" in self.metadata:
            text = self.metadata["embedding_dim"]
            if not text.isdigit() or int(text) < 1:
                raise OnnxModelError(f"{self.path!r}: metadata embedding_dim is {text!r}; expected a positive integer")
            return int(text)
        shape = self.backend.session.get_outputs()[0].shape
        return shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None

    # ------------------------------------------------------------------ model interface
    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` float, reidkit's input (RGB, ImageNet-normalised) at
        ``input_size`` -> ``(B, D)`` float32 CPU embeddings.

        Raises:
            OnnxModelError: ``H, W`` differ from ``input_size``.
        """
        if tuple(x.shape[-2:]) != self.input_size or x.ndim != 4:
            raise OnnxModelError(
                f"{self.path!r} takes (B, 3, {self.input_size[0]}, {self.input_size[1]}) inputs, got "
                f"{tuple(x.shape)}; set the input size to {self.input_size[0]} x {self.input_size[1]}")
        x = x.detach().to("cpu", torch.float32)
        if self._perm is not None:
            x = x[:, self._perm] * self._scale + self._shift  # (B, 3, H, W) in the file's convention
        return self.backend(x)

    def forward_train(self, x: Tensor):
        """Not available: an ONNX file holds the embedding only.

        Raises:
            OnnxModelError: always (e.g. ``eval.local_weight > 0`` asks for local features).
        """
        raise OnnxModelError(f"{self.path!r} is an ONNX embedding model; it has no training outputs "
                             "or local features (set eval.local_weight=0)")

    def describe(self) -> str:
        """E.g. ``"onnxruntime (fp32, 2 threads)"``."""
        return self.backend.describe()

    def close(self) -> None:
        """Nothing to undo."""

    def extra_repr(self) -> str:
        return (f"{self.path!r}, name={self.name!r}, input_size={self.input_size}, color={self.color!r}, "
                f"embedding_dim={self.embedding_dim}, batch_size={self.batch_size}")


def _affine(prep: Preprocessing):
    """``(perm, scale, shift)`` mapping reidkit input to the file's, or Nones for the identity.

    ``raw_rgb = x * IMAGENET_STD + IMAGENET_MEAN``; the network's channel ``c`` reads RGB
    channel ``perm[c]``; ``out_c = (raw[perm[c]] - mean_c) / std_c = x[perm[c]] * scale_c + shift_c``.
    """
    perm = [2, 1, 0] if prep.color == "bgr" else [0, 1, 2]
    if perm == [0, 1, 2] and prep.mean == IMAGENET_MEAN and prep.std == IMAGENET_STD:
        return None, None, None
    src_mean = torch.tensor([IMAGENET_MEAN[p] for p in perm], dtype=torch.float64)
    src_std = torch.tensor([IMAGENET_STD[p] for p in perm], dtype=torch.float64)
    mean, std = torch.tensor(prep.mean, dtype=torch.float64), torch.tensor(prep.std, dtype=torch.float64)
    scale = (src_std / std).float().view(1, 3, 1, 1)
    shift = ((src_mean - mean) / std).float().view(1, 3, 1, 1)
    return perm, scale, shift


def _json(text: str, path: str, key: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise OnnxModelError(f"{path!r}: metadata {key} is {text!r}; expected a JSON list of 3 numbers") from None


def _pair(value, path: str, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise OnnxModelError(f"{path!r}: {what} is {value!r}; expected two positive integers") from None
    if h < 1 or w < 1:
        raise OnnxModelError(f"{path!r}: {what} is {value!r}; expected two positive integers")
    return h, w


def _triple(value, path: str, what: str, positive: bool = False) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (positive and min(out) <= 0):
        kind = "positive numbers" if positive else "numbers"
        raise OnnxModelError(f"{path!r}: {what} is {value!r}; expected 3 {kind} (one per channel)")
    return out


def load_onnx_model(path: str | Path, input_size=None, mean=None, std=None, bgr: bool | None = None,
                    threads: int | None = None) -> OnnxReIDModel:
    """:class:`OnnxReIDModel` of ``path`` (see it for the arguments and errors)."""
    return OnnxReIDModel(path, input_size=input_size, mean=mean, std=std, bgr=bgr, threads=threads)
