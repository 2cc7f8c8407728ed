"""Distance matrices between query and gallery embeddings.

Every metric here is a *distance*: smaller is closer. Results are float32, computed on the
device of the inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _squared_euclidean(
    qf: Tensor, gf: Tensor, g_sqnorm: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    """``||q||^2 + ||g||^2 - 2 q.g``, clamped at 0 against rounding; ``(M, N)``, written into
    ``out`` when given (the same values bit for bit)."""
    g_sqnorm = gf.pow(2).sum(dim=1) if g_sqnorm is None else g_sqnorm  # (N,)
    q_sqnorm = qf.pow(2).sum(dim=1, keepdim=True)  # (M, 1)
    dist = q_sqnorm + g_sqnorm if out is None else torch.add(q_sqnorm, g_sqnorm, out=out)
    return dist.addmm_(qf, gf.T, alpha=-2).clamp_(min=0)


def _euclidean(
    qf: Tensor, gf: Tensor, g_sqnorm: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    return _squared_euclidean(qf, gf, g_sqnorm, out).sqrt_()


def _cosine(
    qf: Tensor, gf: Tensor, g_normalized: bool = False, out: Tensor | None = None
) -> Tensor:
    gn = gf if g_normalized else F.normalize(gf, dim=1)
    qn = F.normalize(qf, dim=1)
    similarity = qn @ gn.T if out is None else torch.mm(qn, gn.T, out=out)  # larger is closer
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


def gallery_distances(gf: Tensor, metric: str = "euclidean") -> Callable[[Tensor], Tensor]:
    """Prepare a gallery once for many query blocks: ``f(qf_block)`` equals
    ``compute_distance_matrix(qf_block, gf, metric)`` exactly, but the gallery's float32 copy,
    squared norms (Euclidean) or normalised rows (cosine) are computed once, not per block.

    Args:
        gf: ``(N, D)`` gallery embeddings.
        metric: as :func:`compute_distance_matrix`.

    Returns:
        A function ``f(qf, out=None)``: ``qf (M, D) -> (M, N)`` float32 distances, smaller is
        closer. ``out``, an ``(M, N)`` contiguous float32 tensor on the gallery's device, receives
        them (the same values bit for bit) and is returned: reusing one buffer for many blocks
        saves a fresh allocation per block, which on Linux CPUs costs a page fault per 4 KiB
        (glibc returns large blocks to the kernel on free) and halved the distance step's speed
        (``benchmarks/bench_evaluate_rank.py``).

    Raises:
        TypeError, ValueError: as :func:`compute_distance_matrix` (checked per block for the query).
    """
    check_features(gf, gf, metric)
    g = gf.float()
    if metric == "cosine":
        gn = F.normalize(g, dim=1)

        def cosine_to_gallery(qf: Tensor, out: Tensor | None = None) -> Tensor:
            check_features(qf, g, metric)
            return _cosine(qf.float(), gn, g_normalized=True, out=out)

        return cosine_to_gallery
    sq = g.pow(2).sum(dim=1)  # (N,)
    euclid = _euclidean if metric == "euclidean" else _squared_euclidean

    def euclidean_to_gallery(qf: Tensor, out: Tensor | None = None) -> Tensor:
        check_features(qf, g, metric)
        return euclid(qf.float(), g, sq, out)

    return euclidean_to_gallery
