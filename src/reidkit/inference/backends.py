"""The inference seam: one callable mapping an image batch to embeddings, on torch or onnxruntime.

Every extraction path (``extract_features``, ``reidkit extract``/``eval``/``search``, the
:class:`~reidkit.Embedder`) calls a *backend*: ``backend(images)`` with ``images: (B, 3, H, W)``
float (RGB, ImageNet-normalised, reidkit's test transform) returns ``(B, D)`` float32 CPU
embeddings. Two implementations:

* :class:`TorchBackend`: the model in eager mode, fp32, or bfloat16 autocast (+ channels-last)
  on CPUs with native bf16, float16 autocast on CUDA.
* :class:`OnnxRuntimeBackend`: an onnxruntime session (an ONNX file, or the torch model exported
  in memory by :func:`select_backend`), fixed-batch-size graphs included (batches are split and
  the last one padded).

:func:`select_backend` picks the fastest correct one (``backend="auto"``): on CPU the model is
exported to ONNX in memory and run by onnxruntime with one thread per core, after checking on
the first batch that its embeddings match torch's (cosine >= :data:`PARITY_MIN_COSINE`), else
torch with a warning; on CUDA torch. bfloat16 torch runs on CPU only when asked (``amp=True``,
``eval.amp: true``), never by default: its embeddings differ from float32's by ~1e-3 (seen on
an Intel AMX CPU), outside the parity the fast path keeps. ``benchmarks/bench_extract.py``
on a 2-core AMD EPYC (AVX2, no bf16; files to features, 256 x 128, batch 32) measured the
onnxruntime path at 3.2x (OSNet x1.0), 1.7x (ResNet-50) and 1.9x (MobileNetV2) the eager torch
fp32 path, export included, with a min cosine to torch of 1.000000.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.runtime import autocast, cpu_has_native_bf16

_log = logging.getLogger("reidkit.inference")

BACKENDS = ("auto", "torch", "onnxruntime")
PARITY_MIN_COSINE = 0.9999
"""Smallest per-image cosine similarity between onnxruntime and torch fp32 embeddings accepted
by the automatic fast path (and by fp32 ONNX export)."""
PARITY_IMAGES = 8
"""Images of the first batch on which the fast path is checked against torch."""


class InferenceError(ValueError):
    """Bad input to an inference backend or an ONNX model; the message names what is at fault."""


class ParityError(InferenceError):
    """An exported graph's embeddings differ from torch's beyond the threshold (numbers in the
    message)."""


class Backend(Protocol):
    """What extraction calls: ``backend(images (B, 3, H, W) float) -> (B, D) float32 CPU``."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...

    def describe(self) -> str: ...


def cpu_threads() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` import (the ``reidkit[onnx]`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- torch
class TorchBackend:
    """The model in torch eager mode.

    Args:
        model: maps ``(B, 3, H, W)`` to ``(B, D)``; put in eval mode and moved to ``device``.
        device: where the model runs.
        amp: autocast (bfloat16 on CPUs with native bf16, float16 on CUDA; a no-op elsewhere).
        channels_last: NHWC memory layout for the model and the inputs; :meth:`close` undoes it.
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", amp: bool = False,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.amp, self.channels_last = amp, channels_last
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device).to(memory_format=self.format)

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        """``images: (B, 3, H, W)`` float -> ``(B, D)`` float32 CPU."""
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=self.format)
        with autocast(self.device, self.amp):
            return self.model(x).float().cpu()

    @torch.inference_mode()
    def forward_local(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(embedding (B, D), local_feature (B, S, C_l))`` float32 CPU, from ``forward_train``."""
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=self.format)
        with autocast(self.device, self.amp):
            out = self.model.forward_train(x)
        return out.embedding.float().cpu(), out.local_feature.float().cpu()

    def describe(self) -> str:
        """E.g. ``"torch (fp32, cpu, 2 threads)"``."""
        if not self.amp or (self.device.type == "cpu" and not cpu_has_native_bf16()):
            precision = "fp32"
        else:
            precision = "fp16 autocast" if self.device.type == "cuda" else "bf16 autocast"
        layout = ", channels-last" if self.channels_last else ""
        where = f"cpu, {torch.get_num_threads()} threads" if self.device.type == "cpu" else str(self.device)
        return f"torch ({precision}{layout}, {where})"

    def close(self) -> None:
        """Give the model back its default (contiguous) memory format."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------- onnxruntime
def make_session(source, threads: int | None = None, device: torch.device | str = "cpu"):
    """An onnxruntime ``InferenceSession`` with all graph optimisations and one thread per core.

    Args:
        source: an ONNX file path, or the serialised model as ``bytes``.
        threads: intra-op threads; ``None`` uses :func:`cpu_threads`.
        device: ``"cuda"`` adds onnxruntime's CUDA provider when it is installed.

    Raises:
        FileNotFoundError: the file does not exist.
        InferenceError: onnxruntime cannot load it (the message names the file).
        ImportError: onnxruntime is not installed (``pip install reidkit[onnx]``).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("onnxruntime is not installed; pip install 'reidkit[onnx]'") from None
    what = "the in-memory ONNX graph" if isinstance(source, bytes) else repr(str(source))
    if not isinstance(source, bytes):
        source = str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"ONNX model {source!r} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise InferenceError(f"onnxruntime cannot load {what}: {' '.join(str(err).split())[:400]}") from None


class OnnxRuntimeBackend:
    """An onnxruntime session over a graph ``(B, 3, H, W) -> (B, D)``.

    A graph with a fixed batch size N (e.g. OpenVINO's ``1 x 3 x 256 x 128`` files) is run in
    chunks of N, the last chunk padded with zeros and the padding's outputs dropped. An output
    of shape ``(B, D, 1, 1)`` is flattened to ``(B, D)``; a graph with several outputs is read
    at its first one.

    Args:
        source: an ONNX file path, serialised ``bytes``, or an ``onnxruntime.InferenceSession``.
        threads: intra-op threads (``None``: one per core).
        precision: label for :meth:`describe` (``"fp32"``, ``"fp16"``, ``"int8"``).
        device: ``"cuda"`` uses onnxruntime's CUDA provider when installed.

    Raises:
        InferenceError: the graph's first input is not 4-D with 3 channels.
    """

    name = "onnxruntime"

    def __init__(self, source, threads: int | None = None, precision: str = "fp32",
                 device: torch.device | str = "cpu"):
        self.session = source if hasattr(source, "run") else make_session(source, threads, device)
        self.precision = precision
        self.threads = threads or cpu_threads()
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3"):
            raise InferenceError(f"ONNX input {inp.name!r} has shape {inp.shape}; expected (B, 3, H, W)")
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.batch_size = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        dims = inp.shape[2:]
        self.input_size = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    def __call__(self, images: Tensor) -> Tensor:
        """``images: (B, 3, H, W)`` float -> ``(B, D)`` float32 CPU.

        Raises:
            InferenceError: ``images`` is not ``(B, 3, H, W)`` with the graph's fixed ``H, W``.
        """
        if images.ndim != 4 or images.shape[1] != 3 or (self.input_size and tuple(images.shape[2:]) != self.input_size):
            want = "(B, 3, {}, {})".format(*self.input_size) if self.input_size else "(B, 3, H, W)"
            raise InferenceError(f"the ONNX graph takes {want} images, got {tuple(images.shape)}")
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        if self.batch_size is None:
            return torch.from_numpy(self._run(x))
        n, chunks = self.batch_size, []
        for start in range(0, len(x), n):
            chunk = x[start : start + n]
            if len(chunk) < n:
                pad = np.zeros((n - len(chunk),) + chunk.shape[1:], dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            chunks.append(self._run(chunk)[: min(n, len(x) - start)])
        return torch.from_numpy(np.concatenate(chunks))

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as err:  # onnxruntime's Fail/InvalidArgument/... derive from Exception only
            raise InferenceError(f"onnxruntime failed on a batch of shape {x.shape}: {' '.join(str(err).split())[:400]}") from None
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)  # (B, D)

    def describe(self) -> str:
        """E.g. ``"onnxruntime (fp32, 2 threads)"`` (``batch 1`` appended for fixed batches)."""
        fixed = f", fixed batch {self.batch_size}" if self.batch_size else ""
        return f"onnxruntime ({self.precision}, {self.threads} threads{fixed})"

    def close(self) -> None:
        """Nothing to undo (the session stays usable)."""


class _ModelAsBackend:
    """An :class:`~reidkit.inference.OnnxReIDModel` (which converts reidkit's input to its file's
    own convention before running its session) seen as a backend."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, images: Tensor) -> Tensor:
        return self.model(images)

    def describe(self) -> str:
        return self.model.describe()

    def close(self) -> None:
        """Nothing to undo."""


# ---------------------------------------------------------------------------- parity
def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of matching rows, ``(N, D), (N, D) -> (N,)`` (larger is closer)."""
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def parity(candidate: Tensor, reference: Tensor) -> tuple[float, float]:
    """``(max abs difference, min cosine similarity)`` between two ``(N, D)`` embedding sets."""
    max_abs = (candidate.double() - reference.double()).abs().max().item() if candidate.numel() else 0.0
    return max_abs, cosine_rows(candidate, reference).min().item()


# ---------------------------------------------------------------------------- selection
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (an optimiser
    step, ``load_state_dict``, BN statistics), so a cached export is never stale."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


def onnx_backend_for(model: nn.Module, input_size: tuple[int, int], threads: int | None = None) -> OnnxRuntimeBackend:
    """The torch model exported in memory and loaded in onnxruntime (cached per model state).

    Raises:
        ImportError: onnx/onnxruntime missing.
        RuntimeError: the export failed.
    """
    from .convert import torch_to_onnx

    key = (_fingerprint(model), tuple(input_size), threads)
    with _CACHE_LOCK:
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    graph = torch_to_onnx(model, input_size)
    backend = OnnxRuntimeBackend(graph.SerializeToString(), threads=threads)
    with _CACHE_LOCK:
        _CACHE[model] = (key, backend)
    return backend


def select_backend(
    model: nn.Module,
    sample: Tensor,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    amp: bool | None = None,
    channels_last: bool | None = None,
    threads: int | None = None,
) -> Backend:
    """The backend to run ``model`` with, checked on ``sample`` (the first batch).

    ``"auto"``: an ONNX model (:class:`~reidkit.inference.OnnxReIDModel`) runs as itself; on
    CUDA, or with ``amp=True`` asked for, torch; on CPU onnxruntime on the model exported in
    memory when onnxruntime is installed, the export works and its embeddings of ``sample``
    match torch fp32 (cosine >= :data:`PARITY_MIN_COSINE`), else torch with a warning.
    ``"torch"`` and ``"onnxruntime"`` force one.

    Args:
        model: a reidkit model, or an ONNX model.
        sample: ``(B, 3, H, W)`` float, the first batch; its ``H, W`` are exported.
        device: where a torch model runs.
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"``.
        amp: torch autocast; ``None``: on for CUDA, off on CPU (float32). ``True`` on a CPU
            with native bfloat16 runs bf16 torch (embeddings ~1e-3 from float32's).
        channels_last: torch NHWC layout; ``None`` goes with ``amp``.
        threads: onnxruntime intra-op threads (``None``: one per core).

    Returns:
        A backend with ``name`` and ``describe()`` (logged at INFO on ``reidkit.inference``).

    Raises:
        InferenceError: unknown ``backend``; ``"torch"`` for an ONNX model; ``"onnxruntime"``
            on a CUDA device.
        ParityError: ``"onnxruntime"`` forced and its embeddings differ from torch's.
        ImportError: ``"onnxruntime"`` forced but not installed.
    """
    if backend not in BACKENDS:
        raise InferenceError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    if getattr(model, "is_onnx", False):
        if backend == "torch":
            raise InferenceError(f"{model.name} is an ONNX file; it runs with onnxruntime only, not backend='torch'")
        return _ModelAsBackend(model)
    if device.type == "cuda":
        if backend == "onnxruntime":
            raise InferenceError("backend='onnxruntime' is the CPU fast path; on CUDA use 'torch' or 'auto'")
        return TorchBackend(model, device, amp=amp is not False, channels_last=channels_last is not False)
    if backend == "torch" or (backend == "auto" and amp is True):
        return TorchBackend(model, device, *_cpu_torch_settings(amp, channels_last))
    fast = _checked_onnx_backend(model, sample, threads, strict=backend == "onnxruntime")
    if fast is None:
        return TorchBackend(model, device, *_cpu_torch_settings(amp, channels_last))
    return fast


def _cpu_torch_settings(amp: bool | None, channels_last: bool | None) -> tuple[bool, bool]:
    """``(amp, channels_last)`` for torch on CPU: ``amp=None`` is float32 (bfloat16 only when
    asked: it changes the embeddings); ``channels_last=None`` goes with ``amp``
    (``benchmarks/bench_models.py`` measured bf16 with channels-last fastest where the CPU has
    native bf16)."""
    amp = bool(amp)
    return amp, (amp if channels_last is None else channels_last)


def _checked_onnx_backend(model: nn.Module, sample: Tensor, threads: int | None, strict: bool):
    """The in-memory onnxruntime backend if it works and matches torch on ``sample``; ``None``
    (with a warning) otherwise, or the error when ``strict``."""
    try:
        fast = onnx_backend_for(model, tuple(sample.shape[-2:]), threads)
        probe = sample[:PARITY_IMAGES]
        max_abs, min_cos = parity(fast(probe), TorchBackend(model, "cpu")(probe))
    except (ImportError, RuntimeError, InferenceError) as err:
        if strict:
            raise
        warnings.warn(f"onnxruntime fast path unavailable ({err}); running torch", stacklevel=3)
        return None
    if min_cos >= PARITY_MIN_COSINE:
        return fast
    message = (f"onnxruntime embeddings of {type(model).__name__} differ from torch's: min cosine "
               f"{min_cos:.6f} < {PARITY_MIN_COSINE} (max abs difference {max_abs:.3g})")
    if strict:
        raise ParityError(message)
    warnings.warn(message + "; running torch", stacklevel=3)
    return None

