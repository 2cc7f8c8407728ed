"""Inference backends (torch eager, onnxruntime) behind one seam, and ONNX model files.

See :mod:`reidkit.inference.backends` for the seam and the automatic CPU fast path, and
:mod:`reidkit.inference.onnx_model` for running any ONNX ReID model like a reidkit model.
"""

from .backends import (
    BACKENDS,
    PARITY_MIN_COSINE,
    InferenceError,
    OnnxRuntimeBackend,
    ParityError,
    TorchBackend,
    cpu_threads,
    onnxruntime_available,
    parity,
    select_backend,
)
from .onnx_model import OnnxModelError, OnnxReIDModel, Preprocessing, load_onnx_model, read_metadata

__all__ = [
    "BACKENDS",
    "PARITY_MIN_COSINE",
    "InferenceError",
    "OnnxModelError",
    "OnnxReIDModel",
    "OnnxRuntimeBackend",
    "ParityError",
    "Preprocessing",
    "TorchBackend",
    "cpu_threads",
    "load_onnx_model",
    "onnxruntime_available",
    "parity",
    "read_metadata",
    "select_backend",
]
