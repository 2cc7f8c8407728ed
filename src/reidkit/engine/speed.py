"""Speed options of the training step: CPU threads, denormals, channels-last, ``torch.compile``,
the allocator's handling of freed memory.

Each is a config switch (``train.threads``, ``train.flush_denormal``, ``train.channels_last``,
``train.compile``, ``train.reuse_memory``), off by
default, that changes how fast a step runs and not what it computes (up to float rounding:
``tests/engine/test_speed_options.py``). Which of them help depends on the machine; measure
with ``benchmarks/bench_train.py``. bfloat16 is ``train.amp`` (:func:`reidkit.engine.runtime.autocast`:
only on CPUs with native bfloat16), and decoding each image once is ``data.cache: memory``
(:class:`reidkit.data.loader.ImageCache`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

import torch
from torch import nn


COMPILE_BACKEND = "inductor"
"""The ``torch.compile`` backend of ``train.compile`` (tests set ``"aot_eager"``: the same
graphs without generating C++)."""

SPEED_KEYS = {"train": ("channels_last", "compile", "threads", "flush_denormal", "reuse_memory"), "data": ("cache", "cache_max_mb")}
"""Config keys that change the speed of a run, not its results (a resume may change them)."""


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; ``None`` leaves torch's default."""
    if threads is not None:
        torch.set_num_threads(threads)


def set_flush_denormal(flush: bool) -> None:
    """Flush denormal floats to zero on CPU when ``flush``; otherwise leave the setting alone.

    Raises:
        ConfigError: ``flush`` on a CPU without the instruction set for it (SSE3 on x86).
    """
    if flush and not torch.set_flush_denormal(True):
        from .config import ConfigError

        raise ConfigError("train.flush_denormal: this CPU cannot flush denormals; set train.flush_denormal: false")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h> mallopt parameters
REUSE_TRIM_BYTES = 1 << 30
"""With :func:`reuse_freed_memory`, free memory at the top of the heap beyond this (1 GiB) still
goes back to the system."""
_reusing = False


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Keep memory freed by large tensors in the process for the next ones (Linux glibc).

    Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so each step's large activations and gradients are new pages
    that fault in on first write: half the time of a MobileNetV2 training step at 160 x 64 on a
    2-core AMD EPYC, and of a ResNet-50 forward at batch 32 (``benchmarks/bench_train.py``,
    ``benchmarks/bench_extract.py``). This sets ``mallopt(M_MMAP_MAX, 0)`` (large blocks come from
    the heap and are reused) and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``, for the whole process and
    for its life; the resident size stays near the peak instead of shrinking between steps.
    PyTorch's CPU performance guide suggests the same effect by preloading jemalloc or tcmalloc,
    which pip cannot install; glibc's own switch needs nothing. No effect on results.

    Args:
        enabled: ``False`` does nothing (the switch cannot be undone in a running process).

    Returns:
        Whether the setting is in effect: ``False`` off Linux or without glibc.
    """
    global _reusing
    if not enabled or _reusing:
        return _reusing
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _reusing = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, REUSE_TRIM_BYTES))
    return _reusing


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout batches are moved to the device in: NHWC when ``channels_last``, else as they are."""
    return torch.channels_last if channels_last else torch.preserve_format


def to_channels_last(module: nn.Module) -> None:
    """Store every 4-D parameter and buffer of ``module`` (convolution weights) as NHWC, in place."""
    module.to(memory_format=torch.channels_last)


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or ``None`` when it can.

    Checks what is known before compiling: dynamo supports this Python, and on CPU a C++
    compiler is found (inductor's own search: ``$CXX``, then ``g++``).
    """
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python version"
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 - any failure means "not available", said in one line
        return f"torch.compile is unavailable here ({_first_line(err)})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class CompileFailed(RuntimeError):
    """``torch.compile`` failed on the first call; the message is one line."""


class CompiledForward:
    """``torch.compile(fn)`` (inductor), whose first failure is raised as one line.

    Args:
        fn: a model's training forward (a bound method or a module).
        backend: the ``torch.compile`` backend (``None``: :data:`COMPILE_BACKEND`).

    Raises:
        CompileFailed: compiling failed on the first call (naming the first line of the cause).
    """

    def __init__(self, fn: Callable, backend: str | None = None):
        self.fn, self.ready = fn, False
        self.compiled = torch.compile(fn, backend=backend or COMPILE_BACKEND)

    def __call__(self, *args):
        if self.ready:
            return self.compiled(*args)
        try:
            out = self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - dynamo/inductor errors are pages long
            raise CompileFailed(
                f"train.compile: torch.compile failed on the first step ({_first_line(err)}); "
                "set train.compile: false"
            ) from None
        self.ready = True
        return out
