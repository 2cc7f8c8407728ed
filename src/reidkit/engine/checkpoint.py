"""Checkpoint files: written atomically, read without ever running code from the file.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values only (format 2):
``model`` (state dict), ``model_name``, ``model_kwargs``, ``num_classes``, ``config`` (the
resolved config as a dict of primitives), ``format_version``; for resuming also ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``elapsed_seconds``, ``rng`` (RNG
states as tensors and lists, :func:`reidkit.engine.runtime.rng_state`) and ``log`` (the
``metrics.jsonl`` records so far). Files are written to a temporary name in the same folder,
fsynced, then renamed over the target, so a crash never leaves a half-written checkpoint.

Reading uses ``torch.load(weights_only=True)``: a pickle that would construct any Python object
other than tensors and primitive containers is refused *before* anything in it runs.
reidkit 0.1 checkpoints (format 1) stored the NumPy RNG state as a NumPy array; they still
load, with NumPy's array reconstruction as the only extra global allowed, after a scan of the
file's pickle opcodes (which executes nothing) has shown that nothing else is referenced.
"""

from __future__ import annotations

import io

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write
from ..models import ReIDModel, create_model

FORMAT_VERSION = 2
_REQUIRED = ("model", "model_name", "num_classes")
_RESUME_KEYS = ("optimizer", "scheduler", "epoch", "rng")
# Globals a reidkit 0.1 checkpoint needs beyond tensors: its NumPy RNG state array.
_LEGACY_NUMPY_GLOBALS = {
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or lacks a required entry; names it."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file + fsync + rename).

    Raises:
        reidkit.fileio.OutputError: the folder is not writable or the disk is full (the old
            file is unchanged, no temporary file is left).
    """
    # serialised in memory first: torch's zip writer reports a full disk as a RuntimeError
    # ("unexpected pos ...") naming nothing; a plain write() raises OSError(ENOSPC) instead,
    # which atomic_write turns into one line naming the path
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path, for_resume: bool = False) -> dict:
    """Read a checkpoint written by reidkit, safely (``weights_only=True``).

    Args:
        path: the ``.pt`` file.
        for_resume: also require the training state (optimiser, scheduler, epoch, RNG).

    Returns:
        The checkpoint dict (format 2 layout, legacy RNG states converted).

    Raises:
        CheckpointError: the file is missing, not a regular file, not a torch file, holds
            Python objects beyond tensors and primitives (never executed), or lacks an entry.
    """
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise CheckpointError(f"checkpoint {str(path)!r} {what}")
    ckpt = _safe_load(path)
    wanted = _REQUIRED + (_RESUME_KEYS if for_resume else ())
    missing = [k for k in wanted if not isinstance(ckpt, dict) or k not in ckpt]
    if missing and isinstance(ckpt, dict) and all(k in ckpt for k in _REQUIRED):
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {', '.join(missing)}: it holds a model but no training "
            "state (e.g. a peer{i}.pt); --resume needs the run's last.pt"
        )
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}; was it written by reidkit?")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["model_name"], str):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'model' must be a state dict and 'model_name' a string")
    if "rng" in ckpt:
        ckpt["rng"] = _upgrade_rng(ckpt["rng"])
    return ckpt


def _safe_load(path: Path):
    """``torch.load(weights_only=True)``; a reidkit 0.1 file gets NumPy arrays allowed too."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # objects beyond tensors: look at which, without running anything
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch file ({_reason(err)})") from None
    needed = set(_globals_in(path))
    if not needed or not needed <= _LEGACY_NUMPY_GLOBALS:
        shown = ", ".join(sorted(needed - _LEGACY_NUMPY_GLOBALS)[:5]) or "unknown objects"
        raise CheckpointError(
            f"checkpoint {str(path)!r} refused: it holds pickled Python objects ({shown}) that reidkit "
            "never executes; it was not written by reidkit or has been tampered with"
        )
    allowed = [np.ndarray, np.dtype, _numpy_reconstruct(), type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch file ({_reason(err)})") from None


def _globals_in(path: Path) -> list[str]:
    """Python globals a torch file's pickle refers to, read from its opcodes (nothing runs)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (zipfile.BadZipFile, RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        return ["<unparseable pickle>"]


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _upgrade_rng(rng: dict) -> dict:
    """RNG states of a format-1 checkpoint (NumPy array inside) in format 2 (lists only)."""
    state = dict(rng)
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, tuple) and isinstance(numpy_state[1], np.ndarray):
        state["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    return state


def model_from_checkpoint(path_or_ckpt: str | Path | dict) -> tuple[ReIDModel, dict]:
    """Rebuild the model stored in a checkpoint (in eval mode) and return it with the checkpoint.

    Raises:
        CheckpointError: see :func:`load_checkpoint`; also when the stored weights do not fit
            the stored model name and keyword arguments.
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    where = "checkpoint" if isinstance(path_or_ckpt, dict) else f"checkpoint {str(path_or_ckpt)!r}"
    try:
        model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot build model {ckpt['model_name']!r}: {_reason(err)}") from None
    load_model_state(model, ckpt["model"], f"{where} (model {ckpt['model_name']!r})")
    return model.eval(), ckpt


def load_model_state(model: torch.nn.Module, state: dict, where: str) -> None:
    """``model.load_state_dict(state)`` (strict) with a one-line error naming what does not fit.

    Raises:
        CheckpointError: missing or unexpected keys, or shapes that differ.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})")
    if problems:
        raise CheckpointError(f"{where}: the weights do not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state)
