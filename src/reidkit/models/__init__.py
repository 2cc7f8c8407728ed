"""Model registry (timm-style): ``create_model(name, num_classes, pretrained=None, **kwargs)``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from .base import Backbone, BNNeckHead, EmbeddingHead, ReIDModel, ReIDOutput, build_head
from .pretrained import WeightsError, WeightsFile

_MODELS: dict[str, Callable[..., ReIDModel]] = {}


def register_model(fn: Callable[..., ReIDModel]) -> Callable[..., ReIDModel]:
    """Register a model factory ``fn(num_classes, pretrained=None, **kwargs)`` under its name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _import_all()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 0, pretrained=None, **kwargs) -> ReIDModel:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: training identities for the classifier; 0 builds no classifier.
        pretrained: ``None`` (random init), ``True`` (torchvision's ImageNet weights through its
            ``weights=`` API; needs internet or a populated torch hub cache), or the path of a
            local weights file (reidkit, torchvision or torchreid layout, checked strictly), or
            ``WeightsFile(path, strict=False)`` to load what fits with a warning.
        **kwargs: passed to the model's constructor (e.g. ``last_stride=1``, ``head="bnneck"``).

    Raises:
        KeyError: unknown ``name`` (the message lists the registered names).
        WeightsError: the weights file is missing, unsafe or does not fit the model.
    """
    _import_all()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](num_classes=num_classes, pretrained=pretrained, **kwargs)


def _import_all() -> None:
    from . import aligned, mobilenet, msfl, mspcnn, osnet, osnet_ain, paul, resnet  # noqa: F401


__all__ = [
    "Backbone",
    "BNNeckHead",
    "EmbeddingHead",
    "ReIDModel",
    "ReIDOutput",
    "WeightsError",
    "WeightsFile",
    "build_head",
    "create_model",
    "list_models",
    "register_model",
]
