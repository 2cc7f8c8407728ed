"""A weighted mapping of losses, and the adapter that builds it from config data.

Loss combinations are data: ``CombinedLoss({"ce": (1.0, CrossEntropyLoss(0.1)), "triplet": (1.0,
TripletLoss(0.3))})``. Each loss is fed the :class:`reidkit.models.ReIDOutput` field its ``input``
attribute names. :func:`build_loss` maps a config dict to such an object through a registry of
loss names; a new loss is added with :func:`register_loss`, not by editing an if-chain.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from functools import partial
from numbers import Real
from typing import Any, NamedTuple

from torch import Tensor, nn

from .cross_entropy import CrossEntropyLoss
from .distances import CosineDistance, Distance, EuclideanDistance
from .semi_hard import SemiHardMiner
from .triplet import BatchAllMiner, BatchHardMiner, TripletLoss, TripletMiner

_INPUTS = ("logits", "feature", "output")


class LossResult(NamedTuple):
    """What :class:`CombinedLoss` returns.

    Attributes:
        total: scalar tensor, ``sum_i weight_i * loss_i``; call ``backward()`` on it.
        parts: each loss's *unweighted* value as a detached Python float, by name, for logging.
    """

    total: Tensor
    parts: dict[str, float]


class CombinedLoss(nn.Module):
    """Weighted sum of named losses, each routed to the model output field it consumes.

    Args:
        losses: ``name -> (weight, loss)`` or ``name -> loss`` (weight 1). A loss is an
            ``nn.Module`` called as ``loss(tensor, labels)`` whose ``input`` attribute is
            ``"logits"``, ``"feature"`` or ``"output"`` (the whole :class:`ReIDOutput`, for losses
            that need several fields, e.g. local features or feature maps).

    Raises:
        ValueError: empty ``losses``, a bad name, a negative or non-finite weight, or an entry
            that is not a loss with a valid ``input``.
    """

    def __init__(self, losses: Mapping[str, nn.Module | tuple[float, nn.Module]]):
        super().__init__()
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError("losses must be a non-empty mapping name -> loss or (weight, loss)")
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, entry in losses.items():
            self.weights[name], self.losses[name] = _unpack(name, entry)
        self.active: set[str] = set(self.weights)

    def set_active(self, names) -> None:
        """Compute only the losses ``names`` from now on (a ``start_epoch`` schedule switches
        losses on); the others are skipped, not weighted by 0.

        Raises:
            ValueError: an unknown name, or no name at all.
        """
        names = set(names)
        unknown = sorted(names - set(self.weights))
        if unknown or not names:
            raise ValueError(f"set_active needs names among {sorted(self.weights)}, got {sorted(names)}")
        self.active = names

    def required_layouts(self) -> dict[str, str]:
        """``loss name -> batch layout`` for the losses that need one (e.g. ``"pairs"``)."""
        return {n: loss.required_layout for n, loss in self.losses.items() if getattr(loss, "required_layout", None)}

    def forward(self, output: Any, labels: Tensor) -> LossResult:
        """Compute every loss and their weighted sum.

        Args:
            output: a :class:`reidkit.models.ReIDOutput` (``feature: (B, D)``, ``logits: (B, K)``
                or ``None``), or any object with those attributes.
            labels: ``(B,)`` integer identities (in ``[0, K)`` for logit losses).

        Returns:
            :class:`LossResult` ``(total, parts)``.

        Raises:
            ValueError: a loss needs ``output.logits`` but it is ``None`` (the message names the
                loss), or a loss rejects its inputs.
        """
        total, parts = None, {}
        for name, loss in self.losses.items():
            if name not in self.active:
                continue
            value = loss(_route(name, loss, output), labels)
            parts[name] = float(value.detach())
            term = self.weights[name] * value
            total = term if total is None else total + term
        return LossResult(total, parts)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def _unpack(name: str, entry: Any) -> tuple[float, nn.Module]:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"loss names must be non-empty strings without '.', got {name!r}")
    weight, loss = entry if isinstance(entry, tuple) and len(entry) == 2 else (1.0, entry)
    if isinstance(weight, bool) or not isinstance(weight, Real) or not 0 <= weight < math.inf:
        raise ValueError(f"weight of loss {name!r} must be a finite number >= 0, got {weight!r}")
    if not isinstance(loss, nn.Module) or getattr(loss, "input", None) not in _INPUTS:
        raise ValueError(
            f"loss {name!r} must be an nn.Module with input in {_INPUTS} (e.g. a ReIDLoss), "
            f"got {type(loss).__name__}"
        )
    return float(weight), loss


def _route(name: str, loss: nn.Module, output: Any) -> Any:
    """The part of ``output`` a loss consumes: a field, or the whole output for ``input="output"``."""
    if loss.input == "output":
        return output
    value = getattr(output, loss.input, None)
    if value is None:
        raise ValueError(
            f"loss {name!r} ({type(loss).__name__}) needs output.{loss.input}, but it is None "
            f"(a model without classifier has no logits: build it with num_classes > 0)"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Config adapter: loss registry and build_loss.

_LOSSES: dict[str, Callable[..., nn.Module]] = {}

_DISTANCES: dict[str, Callable[[], nn.Module]] = {
    "euclidean": EuclideanDistance,
    "squared_euclidean": partial(EuclideanDistance, squared=True),
    "cosine": CosineDistance,
    "normalized_euclidean": partial(EuclideanDistance, normalize=True),
}
_MINERS: dict[str, Callable[[], Any]] = {
    "batch_hard": BatchHardMiner,
    "batch_all": BatchAllMiner,
    "semi_hard": SemiHardMiner,
}


def make_distance(name: str) -> Distance:
    """A new :class:`Distance` (smaller is closer) by config name: ``"euclidean"``,
    ``"squared_euclidean"``, ``"cosine"`` or ``"normalized_euclidean"`` (Euclidean between
    L2-normalised vectors).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _lookup("distance", name, _DISTANCES)()


def make_miner(name: str) -> TripletMiner:
    """A new :class:`TripletMiner` by config name: ``"batch_hard"``, ``"batch_all"`` or
    ``"semi_hard"``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _lookup("mining", name, _MINERS)()


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a loss factory (a class or function taking keyword arguments).

    ``build_loss`` passes a config entry's keys (except ``weight`` and ``type``) as keyword
    arguments and rejects keys the factory does not take.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = factory
        return factory

    return decorator


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


register_loss("ce")(CrossEntropyLoss)


@register_loss("triplet")
def _triplet_from_config(
    margin: float = 0.3,
    soft_margin: bool = False,
    distance: str = "euclidean",
    mining: str = "batch_hard",
) -> TripletLoss:
    """Triplet loss with distance and miner given by name (see ``_DISTANCES``, ``_MINERS``)."""
    distance_obj = _lookup("distance", distance, _DISTANCES)()
    miner = _lookup("mining", mining, _MINERS)()
    return TripletLoss(margin=margin, distance=distance_obj, mining=miner, soft_margin=soft_margin)


def build_loss(spec: Mapping[str, Mapping[str, Any] | None]) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from config data.

    Example::

        build_loss({"ce": {"weight": 1.0, "label_smoothing": 0.1},
                    "triplet": {"weight": 1.0, "margin": 0.3, "soft_margin": False,
                                "distance": "euclidean", "mining": "batch_hard"}})

    Each entry's name is the registered loss name, unless the entry has a ``type`` key (so one
    loss can appear twice: ``{"tri_cos": {"type": "triplet", "distance": "cosine"}}``).
    ``weight`` defaults to 1; the other keys go to the loss factory. Triplet ``distance`` is one of
    ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``; ``mining`` one of ``"batch_hard"``,
    ``"batch_all"``, ``"semi_hard"``.

    Raises:
        ValueError: empty spec, an entry that is not a mapping, an unknown loss name or key, or
            an unknown distance or mining name (the message lists the valid ones).
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"loss spec must be a non-empty mapping name -> options, got {spec!r}")
    return CombinedLoss({name: _build_entry(name, options) for name, options in spec.items()})


def _build_entry(name: str, options: Mapping[str, Any] | None) -> tuple[float, nn.Module]:
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options of loss {name!r} must be a mapping, got {options!r}")
    kwargs = dict(options or {})
    kind, weight = kwargs.pop("type", name), kwargs.pop("weight", 1.0)
    factory = _lookup("loss", kind, _LOSSES)
    _check_keys(kind, factory, kwargs)
    return weight, factory(**kwargs)


def _check_keys(kind: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = sorted({*params, "weight", "type"})
        raise ValueError(f"unknown key(s) {unknown} for loss {kind!r}; valid keys: {valid}")


def _lookup(what: str, name: str, table: Mapping[str, Callable]) -> Callable:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {sorted(table)}")
    return table[name]
