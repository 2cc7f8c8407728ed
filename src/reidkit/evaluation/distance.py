"""Distance matrices between query and gallery embeddings.

Every metric here is a *distance*: smaller is closer. Results are float32, computed on the
device of the inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _squared_euclidean(qf: Tensor, gf: Tensor) -> Tensor:
    """``||q||^2 + ||g||^2 - 2 q.g``, clamped at 0 against rounding; ``(M, N)``."""
    dist = qf.pow(2).sum(dim=1, keepdim=True) + gf.pow(2).sum(dim=1)  # (M, N)
    return dist.addmm_(qf, gf.T, alpha=-2).clamp_(min=0)


def _euclidean(qf: Tensor, gf: Tensor) -> Tensor:
    return _squared_euclidean(qf, gf).sqrt_()


def _cosine(qf: Tensor, gf: Tensor) -> Tensor:
    similarity = F.normalize(qf, dim=1) @ F.normalize(gf, dim=1).T  # (M, N), larger is closer
    return similarity.neg_().add_(1)


_METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "euclidean": _euclidean,
    "sqeuclidean": _squared_euclidean,
    "cosine": _cosine,
}
METRICS: tuple[str, ...] = tuple(_METRICS)


def check_features(qf: Tensor, gf: Tensor, metric: str) -> None:
    """Raise if ``qf``/``gf``/``metric`` are not valid inputs of :func:`compute_distance_matrix`.

    Raises:
        TypeError: a feature matrix is not a real-valued (float or integer) ``torch.Tensor``.
        ValueError: a feature matrix is not 2-D, the embedding sizes differ, or ``metric`` is
            unknown.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, features in (("qf", qf), ("gf", gf)):
        if not isinstance(features, Tensor):
            kind = type(features).__name__
            raise TypeError(f"{name} must be a torch.Tensor (num_{name[0]}, D), got {kind}")
        if features.dtype == torch.bool or features.is_complex():
            raise TypeError(f"{name} must be a real float or integer tensor, got {features.dtype}")
        if features.ndim != 2:
            shape = tuple(features.shape)
            raise ValueError(f"{name} must be 2-D (num_{name[0]}, D), got shape {shape}")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"qf and gf must have the same embedding size D, got qf {tuple(qf.shape)} "
            f"and gf {tuple(gf.shape)}"
        )


def compute_distance_matrix(qf: Tensor, gf: Tensor, metric: str = "euclidean") -> Tensor:
    """Pairwise distances between query and gallery embeddings (smaller is closer).

    Metrics:
        ``"euclidean"``: ``||q - g||_2`` (not squared). Computed as
        ``sqrt(max(||q||^2 + ||g||^2 - 2 q.g, 0))``; the clamp removes small negative values left
        by rounding, so identical rows give 0, not NaN.
        ``"sqeuclidean"``: ``||q - g||_2^2``, clamped at 0 the same way.
        ``"cosine"``: ``1 - cos(q, g)``, in ``[0, 2]``. A zero row is treated as having cosine
        similarity 0 with everything (distance 1).

    Computation is in float32 on the device of the inputs (float64 or integer inputs are cast).
    Memory: the ``(M, N)`` result plus one temporary of the same size at most; no ``(M, N, D)``
    broadcast. Gradients flow through, but ``"euclidean"`` has an infinite gradient at distance 0.

    Args:
        qf: ``(M, D)`` query embeddings.
        gf: ``(N, D)`` gallery embeddings.
        metric: one of ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"``.

    Returns:
        ``(M, N)`` float32 distance matrix, smaller is closer.

    Raises:
        TypeError: an input is not a real-valued ``torch.Tensor``.
        ValueError: an input is not 2-D, the two ``D`` differ, or ``metric`` is unknown (the
            message lists the valid names).
    """
    check_features(qf, gf, metric)
    return _METRICS[metric](qf.float(), gf.float())
