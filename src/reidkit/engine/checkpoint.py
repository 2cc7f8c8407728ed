"""Atomic checkpoint files.

A checkpoint is one ``torch.save`` dict: ``model`` (state dict), ``model_name``,
``model_kwargs``, ``num_classes``, ``config`` (the resolved config as a dict), and for resuming
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``elapsed_seconds``,
``rng``. Files are written to a temporary name in the same folder, flushed, then renamed over
the target (``os.replace``), so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..models import ReIDModel, create_model


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or lacks a required entry; the message names it."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by reidkit.

    Raises:
        CheckpointError: the file is missing, not a torch file, or has no ``model`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # Checkpoints hold RNG states (numpy arrays, tuples), so weights_only loading is too strict.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from None
    missing = [k for k in ("model", "model_name", "num_classes") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}; was it written by reidkit?")
    return ckpt


def model_from_checkpoint(path_or_ckpt: str | Path | dict) -> tuple[ReIDModel, dict]:
    """Rebuild the model stored in a checkpoint (in eval mode) and return it with the checkpoint.

    Raises:
        CheckpointError: see :func:`load_checkpoint`.
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
