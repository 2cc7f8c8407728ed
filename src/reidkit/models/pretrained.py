"""Loading pretrained backbone weights from a local file or torchvision's weights API."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

_PREFIXES = ("module.", "backbone.", "model.")


def _strip_prefixes(state: dict[str, torch.Tensor], own_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``backbone.``) that keep a key from matching ``own_keys``."""
    out = {}
    for key, value in state.items():
        k = key
        while k not in own_keys and k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = value
    return out


def load_state_dict_file(module: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the matching entries of a local state dict file into ``module`` (non-strict).

    Keys may carry ``module.`` / ``backbone.`` / ``model.`` prefixes; a checkpoint dict with a
    ``"state_dict"`` or ``"model"`` entry is unwrapped. Entries whose shape differs from the
    module's are skipped (e.g. an ImageNet classifier).

    Args:
        module: the module to fill.
        path: a ``.pth``/``.pt`` file readable by ``torch.load(weights_only=True)``.

    Returns:
        The module's parameter/buffer names that the file did not provide.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no tensor whose name and shape match ``module``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file {path!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = module.state_dict()
    state = _strip_prefixes(state, set(own))
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ValueError(
            f"{path!r}: none of its {len(state)} tensors matches a parameter of "
            f"{type(module).__name__} by name and shape (first keys in file: {list(state)[:3]}, "
            f"expected e.g. {list(own)[:3]})"
        )
    module.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        warnings.warn(
            f"{path!r} did not provide {len(missing)} of {len(own)} tensors of "
            f"{type(module).__name__}, e.g. {missing[:5]}",
            stacklevel=2,
        )
    return missing


def load_pretrained(
    module: nn.Module,
    pretrained: bool | str | os.PathLike | None,
    torchvision_state: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Initialise ``module`` from ``pretrained``.

    Args:
        module: the backbone to fill.
        pretrained: ``None``/``False`` (nothing), a path to a local state dict, or ``True``
            (call ``torchvision_state()``, which fetches torchvision's ImageNet weights; that needs
            internet or a populated torch hub cache).
        torchvision_state: returns the torchvision state dict with keys matching ``module``;
            ``None`` when no such source exists.

    Raises:
        ValueError: ``pretrained=True`` but the model has no torchvision weights; or the file
            matches nothing.
        FileNotFoundError: the file does not exist.
    """
    if pretrained is None or pretrained is False:
        return
    if pretrained is True:
        if torchvision_state is None:
            raise ValueError(
                f"{type(module).__name__} has no downloadable ImageNet weights; "
                "pass pretrained=<path to a local state dict>"
            )
        state = torchvision_state()
        module.load_state_dict(_strip_prefixes(state, set(module.state_dict())), strict=False)
        return
    load_state_dict_file(module, pretrained)
