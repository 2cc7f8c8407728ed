"""Constructor-argument checks shared by the metric losses (margins, weights, distance objects)."""

from __future__ import annotations

import math

from .distances import Distance, EuclideanDistance


def check_non_negative(**values: float) -> None:
    """Raise unless every keyword value is a finite real number ``>= 0``.

    Raises:
        ValueError: names the first offending argument and its value.
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def resolve_distance(distance: Distance | None) -> Distance:
    """``distance`` itself, or ``EuclideanDistance()`` (smaller is closer) when ``None``.

    Raises:
        TypeError: ``distance`` is neither ``None`` nor a :class:`Distance`.
    """
    if distance is None:
        return EuclideanDistance()
    if not isinstance(distance, Distance):
        raise TypeError(f"distance must be a Distance, got {type(distance).__name__}")
    return distance
