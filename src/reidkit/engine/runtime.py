"""Device, seeding and mixed-precision helpers."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bfloat16 matrix maths natively (AVX512-BF16 or AMX)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed-precision context: bfloat16 on CPUs with native bf16, float16 on CUDA, else none."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Snapshot of the Python, NumPy and torch RNG states (for checkpoints).

    Only tensors, tuples, lists and numbers, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)``: the NumPy key array is stored as a list of ints.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """``random.setstate`` needs tuples where a round trip may have produced lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@contextlib.contextmanager
def preserved_rng():
    """Run a block without changing the global RNG streams (Python, NumPy, torch, CUDA).

    Evaluation inside a training run (its DataLoader draws a seed from torch's generator) must
    not shift the training run's random stream, or a run resumed from a checkpoint saved before
    the evaluation would diverge from the uninterrupted run.
    """
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
