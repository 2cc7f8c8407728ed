"""Training methods: how one step of a run turns a batch into a loss.

The :class:`~reidkit.engine.trainer.Trainer` keeps only the loop (epochs, budget, schedule,
optimiser step, logging, checkpoints, evaluation); everything a way of training needs lives in
one :class:`TrainingMethod` object chosen by name in the config (``method.name``), built from a
small registry like models and losses. A new way of training (a memory bank, an unsupervised
loop) is a new method, not a branch in the loop.

Registered: ``supervised`` (one model, the ``loss`` mapping, optional MSGR), ``mutual`` (peers
with deep / metric mutual learning), ``paul`` (unsupervised patch-based learning, Yang et al.
2019). ``auto`` picks ``mutual`` when ``mutual.peers`` is set, else ``supervised``.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Batch, MethodContext, TrainingMethod, build_model

_METHODS: dict[str, Callable[..., TrainingMethod]] = {}


def register_method(name: str):
    """Decorator registering a :class:`TrainingMethod` subclass under ``name``."""

    def deco(cls):
        if name in _METHODS:
            raise ValueError(f"training method {name!r} is registered twice")
        _METHODS[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Registered training method names, sorted."""
    _import_all()
    return sorted(_METHODS)


def method_name(cfg) -> str:
    """The method a config asks for (``auto`` resolved)."""
    name = cfg.method.name
    if name == "auto":
        return "mutual" if cfg.mutual.peers else "supervised"
    return name


def build_method(ctx: MethodContext) -> TrainingMethod:
    """Build the method named by ``ctx.cfg.method.name`` with ``ctx.cfg.method.options``.

    Raises:
        ConfigError: unknown method name, an option it does not take, or a config the method
            cannot run (the message names the key).
    """
    from ..config import ConfigError

    _import_all()
    name = method_name(ctx.cfg)
    if name not in _METHODS:
        raise ConfigError(f"method.name: unknown training method {name!r}; registered: {', '.join(sorted(_METHODS))}")
    try:
        return _METHODS[name](ctx, **ctx.cfg.method.options)
    except TypeError as err:
        raise ConfigError(f"method.options of {name!r}: {err}") from None


def _import_all() -> None:
    from . import paul, supervised  # noqa: F401


__all__ = ["Batch", "MethodContext", "TrainingMethod", "build_method", "build_model", "list_methods",
           "method_name", "register_method"]
