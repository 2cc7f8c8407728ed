"""A torch ReID model as an in-memory ONNX graph (``torch.onnx.export``, TorchScript exporter).

The TorchScript-based exporter (``dynamo=False``) is used rather than torch 2.14's default
``torch.export`` one: on reidkit's convnets both give the same graph numerically (max abs
difference < 1e-4, cosine > 0.99999 on every registered model), but the TorchScript exporter is
~5x faster (25 s vs 4 min for the 15 models at 64 x 32 on a 2-core CPU), which matters for the
automatic onnxruntime fast path that exports on the fly. torch marks it deprecated; ``exporter=
"dynamo"`` selects the other one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
import warnings

import torch
from torch import Tensor, nn

DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
_STDOUT_LOCK = threading.RLock()  # one export at a time points file descriptor 1 elsewhere


def supported_opsets(exporter: str = "torchscript") -> tuple[int, int]:
    """``(lowest, highest)`` ONNX opset the installed torch exporter writes and onnx knows.

    With torch 2.14 and onnx 1.23: ``(7, 20)`` for ``"torchscript"``, ``(7, 23)`` for
    ``"dynamo"`` (torch's own bounds, read from ``torch.onnx._constants``).
    """
    import importlib

    import onnx

    try:
        limits = importlib.import_module("torch.onnx._constants")
    except ImportError:  # a torch that moved them: the bounds of torch 2.14
        limits = None
    low = getattr(limits, "ONNX_MIN_OPSET", 7)
    if exporter == "torchscript":
        high = getattr(limits, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    else:
        high = getattr(limits, "ONNX_MAX_OPSET", 23)
    return low, min(high, onnx.defs.onnx_opset_version())


class _Normalized(nn.Module):
    """``model(x)`` L2-normalised along the embedding dimension (baked into the graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.model(x), dim=1)  # (B, D)


def torch_to_onnx(
    model: nn.Module,
    input_size: tuple[int, int],
    opset: int | None = None,
    batch_size: int | None = None,
    l2_normalize: bool = False,
    exporter: str = "torchscript",
):
    """Export ``model`` (put in eval mode) to an ONNX graph held in memory.

    The graph has one input ``images: (B, 3, H, W)`` float32 and one output
    ``embeddings: (B, D)`` float32.

    Args:
        model: maps ``(B, 3, H, W)`` to ``(B, D)`` (a :class:`reidkit.models.ReIDModel`).
        input_size: ``(H, W)`` in pixels; fixed in the graph.
        opset: ONNX opset version; ``None`` uses :data:`DEFAULT_OPSET` (17, read by most
            runtimes), raised to the version an operator needs when the exporter says so (e.g.
            20 for ``affine_grid``/``grid_sample``, PAUL's spatial transformer).
        batch_size: a fixed batch size B; ``None`` makes B a dynamic dimension.
        l2_normalize: append an L2 normalisation of the output.
        exporter: ``"torchscript"`` (default, fast) or ``"dynamo"`` (``torch.export`` based).

    Returns:
        ``onnx.ModelProto``.

    Raises:
        ValueError: unknown ``exporter``, an ``opset`` outside :func:`supported_opsets`, or a bad
            ``input_size``/``batch_size``.
        RuntimeError: the exporter failed (the message names the model class; the exporter's
            own output, e.g. the TorchScript IR graph it prints on failure, is suppressed).
    """
    import onnx

    height, width = _check_size(input_size)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (dynamic), got {batch_size!r}")
    _check_opset(opset, exporter)
    model = model.eval()
    net = _Normalized(model) if l2_normalize else model
    example = torch.zeros(batch_size or 2, 3, height, width)
    version = DEFAULT_OPSET if opset is None else opset
    for _ in range(2):
        buf = io.BytesIO()
        with _exporting():
            try:
                _export(net, example, buf, version, batch_size is None, exporter)
                return onnx.load_from_string(buf.getvalue())
            except (RuntimeError, TypeError, ValueError, NotImplementedError) as err:
                needed = _needed_opset(err) if opset is None else None
                if needed is None or needed <= version:
                    raise RuntimeError(f"ONNX export of {type(model).__name__} (opset {version}) failed: {err}") from err
                version = needed
    raise AssertionError("unreachable")  # pragma: no cover


def _needed_opset(err: Exception) -> int | None:
    """The opset an unsupported-operator error asks for ("... added in version 20 ..."), if any."""
    match = re.search(r"added in version (\d+)", str(err))
    return int(match.group(1)) if match else None


def _export(net: nn.Module, example: Tensor, buf: io.BytesIO, opset: int, dynamic: bool, exporter: str) -> None:
    if exporter == "torchscript":
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
        torch.onnx.export(
            net, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
        )
    elif exporter == "dynamo":
        shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=shapes, verbose=False,
        )
        buf.write(program.model_proto.SerializeToString())
    else:
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")


def _check_opset(opset: int | None, exporter: str) -> None:
    if opset is None or exporter not in ("torchscript", "dynamo"):
        return  # an unknown exporter is reported by _export
    low, high = supported_opsets(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ValueError(f"opset {opset!r} is outside what torch's {exporter} exporter writes ({low} to {high})")


@contextlib.contextmanager
def _exporting():
    """Grad-free tracing outside ``inference_mode`` (tracing inference tensors fails), quietly."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


@contextlib.contextmanager
def _quiet_stdout():
    """Discard what the exporter prints, at the file-descriptor level and in ``sys.stdout``.

    torch's TorchScript exporter switches its C++ ONNX log on (and, a bug in torch 2.14's
    ``setup_onnx_logging``, never off) and writes the whole IR graph (~1000 lines for OSNet) to
    the process's stdout when an export fails. While an export runs, file descriptor 1 points at
    ``/dev/null``, so output of other threads to stdout in that time is lost too; the log is
    switched off again afterwards.
    """
    with _STDOUT_LOCK:
        saved = _redirect_fd(1)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            _restore_fd(1, saved)
            if hasattr(torch._C, "_jit_set_onnx_log_enabled"):
                torch._C._jit_set_onnx_log_enabled(False)


def _redirect_fd(fd: int) -> int | None:
    """Point ``fd`` at ``/dev/null``; its saved copy, or ``None`` when it cannot be done."""
    try:
        saved = os.dup(fd)
    except OSError:
        return None
    _flush_c_stdio()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return saved


def _restore_fd(fd: int, saved: int | None) -> None:
    if saved is None:
        return
    _flush_c_stdio()  # C++ output still buffered goes to /dev/null, not to the restored stdout
    os.dup2(saved, fd)
    os.close(saved)


def _flush_c_stdio() -> None:
    if sys.stdout is not None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def _check_size(input_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (height, width) in pixels, got {input_size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"input_size must be positive (height, width), got {input_size!r}")
    return height, width
