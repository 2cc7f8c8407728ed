"""Datasets (a registry at the string boundary), transforms and samplers."""

from __future__ import annotations

from collections.abc import Callable
import fnmatch
import inspect

from .base import DatasetError, ImageReadError, ReIDDataset, Sample, read_image, require_dir

_DATASETS: dict[str, Callable[..., ReIDDataset]] = {}


def register_dataset(name: str):
    """Decorator registering ``fn(root=..., **options) -> ReIDDataset`` under ``name``."""

    def deco(fn):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = fn
        return fn

    return deco


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets matching a shell-style ``pattern``, sorted."""
    _import_all()
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def create_dataset(name: str, root: str | None = None, **options) -> ReIDDataset:
    """Build the dataset registered as ``name``.

    Args:
        name: one of :func:`list_datasets`.
        root: the folder that holds the dataset's files (ignored by ``synthetic``).
        **options: passed to the dataset's builder (e.g. ``split_id`` for ``cuhk01``).

    Raises:
        KeyError: ``name`` is not registered (the message lists the registered names).
        DatasetError: an option the builder does not take (the message lists the valid ones), or
            the files under ``root`` are not in the expected layout.
    """
    _import_all()
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(sorted(_DATASETS))}")
    builder = _DATASETS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            valid = ", ".join(p for p in params if p != "root")
            raise DatasetError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    try:
        return builder(root=root, **options)
    except TypeError as err:  # an option of the wrong type deep inside the builder
        raise DatasetError(f"{name}: bad option value ({err})") from None


def _import_all() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from . import datasets  # noqa: F401


__all__ = [
    "DatasetError",
    "ImageReadError",
    "ReIDDataset",
    "Sample",
    "create_dataset",
    "list_datasets",
    "read_image",
    "register_dataset",
    "require_dir",
]
