"""Export a reidkit model to an ONNX file with its preprocessing metadata, checked for parity.

:func:`export_onnx` writes a graph ``images: (B, 3, H, W) float32 -> embeddings: (B, D)
float32`` (B dynamic, or fixed), stores the metadata of :mod:`reidkit.inference.onnx_model`
(input size, ImageNet mean/std, RGB order, D, whether the output is L2-normalised, model name,
reidkit version, precision) in ``model.metadata_props``, then runs the new graph in onnxruntime
on real images (``check_images``) or on images of the synthetic dataset and compares it with
the torch model in fp32: it reports the largest absolute difference and the smallest per-image
cosine similarity (larger is closer) and refuses the export below the precision's threshold
(:data:`PARITY_THRESHOLDS`: fp32 >= 0.9999, fp16 >= 0.999; int8 is reported, and judged by
:func:`compare_on_dataset`'s rank-1 and mAP change). Nothing is written at ``output`` unless the
check passes; the file is written atomically (:func:`reidkit.fileio.atomic_write`).

Precisions: ``fp16`` converts weights and activations with onnxruntime's
``transformers.float16`` converter, keeping float32 inputs and outputs; ``int8`` is onnxruntime's
static quantisation (``quantize_static`` after ``quant_pre_process``, QDQ format, per-channel
int8 weights, uint8 activations calibrated by min/max over ``calibration`` images) with
``reduce_range`` (7-bit weights): on x86 CPUs without VNNI (AVX2, as here) onnxruntime's u8s8
kernels saturate otherwise (ImageNet MobileNetV2 at 128 x 64: min cosine to fp32 0.46 without,
0.86 with; 0.86 is also what exact fake-quantisation gives, so that loss is int8's own).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import __version__
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, build_transforms
from .inference.backends import InferenceError, OnnxRuntimeBackend, ParityError, TorchBackend, parity
from .inference.convert import INPUT_NAME, torch_to_onnx

PRECISIONS = ("fp32", "fp16", "int8")
PARITY_THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": None}
"""Smallest per-image cosine similarity to torch fp32 an export must reach (``None``: reported)."""
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ExportReport(NamedTuple):
    """What :func:`export_onnx` wrote and how close it is to torch.

    Attributes:
        path: the ONNX file written.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        check_source: where the parity images came from (a folder, or ``"synthetic"``).
        num_images: parity images compared.
        max_abs_diff: largest ``|onnx - torch|`` over all embedding entries.
        min_cosine: smallest per-image cosine similarity between the two embeddings.
        threshold: the cosine the precision requires (``None`` for int8).
        metadata: the ``metadata_props`` written.
        size_bytes: file size in bytes.
    """

    path: str
    precision: str
    check_source: str
    num_images: int
    max_abs_diff: float
    min_cosine: float
    threshold: float | None
    metadata: dict[str, str]
    size_bytes: int

    def summary(self) -> str:
        """One line, e.g. ``wrote m.onnx (fp32, 8.9 MB): max abs diff 3.1e-06, min cosine ...``."""
        need = "" if self.threshold is None else f" (>= {self.threshold})"
        return (f"wrote {self.path} ({self.precision}, {self.size_bytes / 1e6:.1f} MB): parity on "
                f"{self.num_images} {self.check_source} images: max abs diff {self.max_abs_diff:.3g}, "
                f"min cosine {self.min_cosine:.6f}{need}")


def export_onnx(
    model: nn.Module,
    output: str | Path,
    input_size: tuple[int, int] = (256, 128),
    model_name: str | None = None,
    opset: int | None = None,
    batch_size: int | None = None,
    precision: str = "fp32",
    calibration: str | Path | Sequence[str] | None = None,
    check_images: str | Path | Sequence[str] | None = None,
    num_check_images: int = 16,
    l2_normalize: bool = False,
    exporter: str = "torchscript",
) -> ExportReport:
    """Export ``model`` to ``output`` with metadata, after checking parity with torch.

    Args:
        model: a reidkit model mapping ``(B, 3, H, W)`` (RGB, ImageNet-normalised) to ``(B, D)``.
        output: the ``.onnx`` file to write (its folder is created).
        input_size: ``(H, W)`` in pixels the graph takes (the model's training size).
        model_name: stored as ``model_name`` (default: the model's class name).
        opset: ONNX opset version; ``None``: 17, or what an operator needs (up to 20).
        batch_size: fixed batch size; ``None`` exports a dynamic batch dimension.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        calibration: int8 only, required: a folder of images (searched recursively) or a list
            of image paths, for the activation ranges (at most 256 are read).
        check_images: a folder or list of images for the parity check; ``None`` renders images
            of the ``synthetic`` dataset.
        num_check_images: images used for the parity check (spread evenly over the folder).
        l2_normalize: L2-normalise the output inside the graph (``output_normalized``).
        exporter: ``"torchscript"`` or ``"dynamo"`` (see :mod:`reidkit.inference.convert`).

    Returns:
        :class:`ExportReport`.

    Raises:
        ParityError: the exported graph's min cosine is below :data:`PARITY_THRESHOLDS`
            (nothing is written; the message has the numbers).
        InferenceError: an unknown precision, int8 without calibration images, or a folder
            without images.
        RuntimeError: the exporter failed.
        reidkit.fileio.OutputError: ``output`` cannot be written.
    """
    from .fileio import atomic_write

    if precision not in PRECISIONS:
        raise InferenceError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model = model.eval()
    images, source = _check_batch(check_images, input_size, num_check_images)
    graph = torch_to_onnx(model, input_size, opset, batch_size, l2_normalize, exporter)
    graph = _convert(graph, precision, calibration, input_size, batch_size)
    reference = TorchBackend(model)(images)  # (N, D) fp32
    if l2_normalize:
        reference = nn.functional.normalize(reference, dim=1)
    meta = _metadata(model_name or type(model).__name__, input_size, reference.shape[1], l2_normalize, precision)
    _set_metadata(graph, meta)
    data = graph.SerializeToString()
    max_abs, min_cos = parity(OnnxRuntimeBackend(data, precision=precision)(images), reference)
    threshold = PARITY_THRESHOLDS[precision]
    if threshold is not None and min_cos < threshold:
        raise ParityError(
            f"{precision} export of {meta['model_name']} not written to {str(output)!r}: min cosine "
            f"{min_cos:.6f} < {threshold} against torch fp32 (max abs diff {max_abs:.3g}) on "
            f"{len(images)} {source} images")
    path = atomic_write(output, lambda handle: handle.write(data))
    return ExportReport(str(path), precision, source, len(images), max_abs, min_cos, threshold, meta, len(data))


def export_checkpoint(checkpoint: str | Path, output: str | Path, **kwargs) -> ExportReport:
    """:func:`export_onnx` of a reidkit checkpoint, at its run's ``data.height x data.width``.

    Raises:
        reidkit.engine.checkpoint.CheckpointError: the checkpoint cannot be read.
        See :func:`export_onnx` for the rest.
    """
    from .engine.checkpoint import model_from_checkpoint
    from .engine.config import config_from_dict

    model, ckpt = model_from_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.get("config", {}))
    kwargs.setdefault("input_size", (cfg.data.height, cfg.data.width))
    kwargs.setdefault("model_name", ckpt["model_name"])
    return export_onnx(model, output, **kwargs)


def export_registered(name: str, output: str | Path, pretrained: str | Path | None = None, **kwargs) -> ExportReport:
    """:func:`export_onnx` of a registered model (``reidkit models``) with optional weights.

    Raises:
        KeyError: unknown model name. See :func:`export_onnx` for the rest.
    """
    from .models import create_model

    model = create_model(name, num_classes=0, pretrained=pretrained)
    kwargs.setdefault("model_name", name)
    return export_onnx(model, output, **kwargs)


def compare_on_dataset(reference: nn.Module, candidate: nn.Module, dataset, cfg, device="cpu") -> dict[str, float]:
    """Rank-1 and mAP of two models on ``dataset``'s query/gallery, and the change.

    Used to judge an int8 export: ``reference`` is the torch model (or the fp32 file), and
    ``candidate`` an :class:`~reidkit.inference.OnnxReIDModel` of the int8 file.

    Args:
        reference: a model.
        candidate: a model.
        dataset: a :class:`reidkit.data.ReIDDataset`.
        cfg: the :class:`reidkit.engine.config.Config` (input size, metric, normalisation).
        device: where torch models run.

    Returns:
        ``rank1_reference``, ``rank1``, ``rank1_change``, ``mAP_reference``, ``mAP``,
        ``mAP_change``: fractions in [0, 1] (changes are candidate minus reference).
    """
    from .engine.evaluate import evaluate_model

    a = evaluate_model(reference, dataset, cfg, device)
    b = evaluate_model(candidate, dataset, cfg, device)
    r1a, r1b = float(a.cmc[0]), float(b.cmc[0])
    return {"rank1_reference": r1a, "rank1": r1b, "rank1_change": r1b - r1a,
            "mAP_reference": float(a.mAP), "mAP": float(b.mAP), "mAP_change": float(b.mAP) - float(a.mAP)}


# ---------------------------------------------------------------------------- helpers
def _metadata(name: str, input_size, dim: int, normalized: bool, precision: str) -> dict[str, str]:
    import json

    return {
        "input_height": str(int(input_size[0])), "input_width": str(int(input_size[1])),
        "mean": json.dumps(list(IMAGENET_MEAN)), "std": json.dumps(list(IMAGENET_STD)),
        "color_order": "rgb", "embedding_dim": str(int(dim)),
        "output_normalized": "true" if normalized else "false", "model_name": name,
        "reidkit_version": __version__, "precision": precision,
    }


def _set_metadata(graph, meta: dict[str, str]) -> None:
    keep = [p for p in graph.metadata_props if p.key not in meta]
    del graph.metadata_props[:]
    graph.metadata_props.extend(keep)
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


def list_images(source: str | Path | Sequence[str], what: str) -> list[str]:
    """Image paths of a folder (recursive, sorted) or the given list.

    Raises:
        InferenceError: the folder does not exist or holds no images.
    """
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise InferenceError(f"{what} {str(root)!r} is not a folder of images")
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    else:
        paths = [str(p) for p in source]
    if not paths:
        raise InferenceError(f"{what} {str(source)!r} holds no images ({', '.join(IMAGE_EXTS)})")
    return paths


def load_batch(paths: Sequence[str], input_size) -> Tensor:
    """``(N, 3, H, W)`` float: the images read with :func:`reidkit.data.read_image` and the test
    transform (resize, ImageNet normalisation), as ``reidkit extract`` prepares them."""
    from .data import read_image

    transform = build_transforms(TransformConfig(height=input_size[0], width=input_size[1]), train=False)
    return torch.stack([transform(read_image(p)) for p in paths])


def _check_batch(check_images, input_size, num: int) -> tuple[Tensor, str]:
    if check_images is None:
        from .data.datasets.synthetic import render_image

        transform = build_transforms(TransformConfig(height=input_size[0], width=input_size[1]), train=False)
        pictures = [render_image(0, 1 + i // 2, i % 2, i, image_size=(128, 64)) for i in range(num)]
        return torch.stack([transform(p) for p in pictures]), "synthetic"
    paths = list_images(check_images, "--check-images")
    step = max(1, len(paths) // num)
    return load_batch(paths[::step][:num], input_size), str(check_images) if isinstance(check_images, (str, Path)) else "given"


def _convert(graph, precision: str, calibration, input_size, batch_size: int | None):
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(graph, keep_io_types=True)
    if precision == "int8":
        return _quantize(graph, calibration, input_size, batch_size)
    return graph


def _quantize(graph, calibration, input_size, batch_size: int | None, max_images: int = 256):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """Feeds ``batch`` calibration images at a time (full batches: fixed graphs need them)."""

        def __init__(self, paths: list[str], batch: int):
            self.chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
            self.chunks[-1] = (self.chunks[-1] * batch)[:batch]
            self.pos = 0

        def get_next(self):
            if self.pos >= len(self.chunks):
                return None
            self.pos += 1
            return {INPUT_NAME: load_batch(self.chunks[self.pos - 1], input_size).numpy()}

        def rewind(self):
            self.pos = 0

    if calibration is None:
        raise InferenceError("int8 export needs calibration images (--calibration DIR)")
    paths = list_images(calibration, "--calibration")
    reader = Reader(paths[:: max(1, len(paths) // max_images)][:max_images], batch_size or 8)
    with tempfile.TemporaryDirectory(prefix="reidkit-int8-") as tmp, _quiet_root_logger():
        src, pre, dst = (str(Path(tmp) / name) for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(graph, src)
        quant_pre_process(src, pre)  # shape inference + graph optimisation, as onnxruntime advises
        quantize_static(
            pre, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        return onnx.load(dst)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser logs one line per shared bias on the root logger; hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
