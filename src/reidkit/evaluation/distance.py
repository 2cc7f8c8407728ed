"""Distance matrices between query and gallery embeddings.

Every metric here is a *distance*: smaller is closer. Results are float32, computed on the
device of the inputs.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Callable

import numpy as np
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


GEMM_ENV = "REIDKIT_GEMM"
"""Environment variable choosing the float32 matrix product of :func:`gallery_distances` on CPU:
``numpy`` (numpy's BLAS, OpenBLAS in numpy's wheels), ``torch`` (torch's, MKL in its x86
builds), or unset: ``numpy`` on x86 CPUs not made by Intel, ``torch`` elsewhere."""


@lru_cache(maxsize=1)
def numpy_gemm_default() -> bool:
    """Whether :func:`gallery_distances` multiplies with numpy's BLAS on this CPU by default.

    Why not always torch: torch's x86 wheels link Intel MKL, whose float32 GEMM runs at 75-105
    GFLOPS on a 2-core AMD EPYC where numpy's OpenBLAS reaches 102-152 on the same products
    (``(b, 512) x (512, G)``, b = 102-1024; see ``benchmarks/bench_evaluate_rank.py``), and the
    product is most of :func:`~reidkit.evaluation.evaluate_rank_from_features`'s time. On Intel
    CPUs MKL is kept. The choice is fixed per machine (not timed per run), so a machine always
    gives the same float32 distances; ``REIDKIT_GEMM`` overrides it (any other value than
    ``numpy`` or ``torch`` is ignored with a warning naming it).
    """
    choice = os.environ.get(GEMM_ENV, "").strip().lower()
    if choice in ("numpy", "torch"):
        return choice == "numpy"
    if choice:
        warnings.warn(f"{GEMM_ENV}={os.environ[GEMM_ENV]!r} is neither 'numpy' nor 'torch'; ignored "
                      "(the default for this CPU is used)", stacklevel=2)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            vendor = next((line.split(":", 1)[1].strip() for line in info if line.startswith("vendor_id")), "")
    except OSError:
        return False
    return bool(vendor) and vendor != "GenuineIntel"


def _product_into(a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    """``a @ b.T`` for ``a: (M, D)``, ``b: (N, D)`` float32 (into ``out`` when given), with
    numpy's BLAS on CPU where :func:`numpy_gemm_default` says so and no gradient is needed."""
    use_numpy = (
        a.device.type == "cpu" and b.device.type == "cpu" and a.dtype == b.dtype == torch.float32
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and numpy_gemm_default()
    )
    if not use_numpy:
        return a @ b.T if out is None else torch.mm(a, b.T, out=out)
    out = torch.empty(a.shape[0], b.shape[0]) if out is None else out
    np.matmul(a.detach().numpy(), b.detach().numpy().T, out=out.numpy())
    return out


def gallery_distances(gf: Tensor, metric: str = "euclidean") -> Callable[[Tensor], Tensor]:
    """Prepare a gallery once for many query blocks: ``f(qf_block)`` gives the distances of
    :func:`compute_distance_matrix` (same metric definitions, float32), with the gallery's
    float32 copy, squared norms (Euclidean) or normalised rows (cosine) computed once.

    The product ``qf @ gf.T`` is the BLAS call of :func:`numpy_gemm_default` (numpy's on
    non-Intel x86 CPUs, torch's elsewhere), and a blocked product sums in another order than a
    whole one, so values may differ from :func:`compute_distance_matrix`'s in the last float32
    bits (about 1e-7 relative; both are float32 products of the same accuracy). Euclidean:
    ``sqrt(max(||q||^2 + ||g||^2 - 2 q.g, 0))`` as there.

    Args:
        gf: ``(N, D)`` gallery embeddings.
        metric: as :func:`compute_distance_matrix`.

    Returns:
        A function ``f(qf, out=None)``: ``qf (M, D) -> (M, N)`` float32 distances, smaller is
        closer. ``out``, an ``(M, N)`` contiguous float32 tensor on the gallery's device, receives
        them and is returned: reusing one buffer for many blocks saves a fresh allocation per
        block, which on Linux CPUs costs a page fault per 4 KiB (glibc returns large blocks to
        the kernel on free) and halved the distance step's speed (2-core AMD EPYC).

    Raises:
        TypeError, ValueError: as :func:`compute_distance_matrix` (checked per block for the query).
    """
    if metric == "cosine":  # 1 - cos: the ranking key -cos, plus one
        negative_cosine = gallery_ranking_keys(gf, metric)
        return lambda qf, out=None: negative_cosine(qf, out).add_(1)
    check_features(gf, gf, metric)
    g = gf.float()
    sq = g.pow(2).sum(dim=1)  # (N,)
    root = metric == "euclidean"

    def euclidean_to_gallery(qf: Tensor, out: Tensor | None = None) -> Tensor:
        check_features(qf, g, metric)
        q = qf.float()
        dist = _product_into(q, g, out).mul_(-2)  # -2 q.g (exact scaling)
        dist.add_(q.pow(2).sum(dim=1, keepdim=True)).add_(sq).clamp_(min=0)
        return dist.sqrt_() if root else dist

    return euclidean_to_gallery


def gallery_ranking_keys(gf: Tensor, metric: str = "euclidean") -> Callable[..., Tensor]:
    """Like :func:`gallery_distances`, but ``f(qf)`` gives per-row *ranking keys* instead of
    distances: in each query's row they sort like that query's distances (smaller is closer),
    with less arithmetic per entry. For ranking metrics (CMC, mAP, mINP), which depend only on
    each row's order.

    Keys: ``||g||^2 / 2 - q.g`` for ``euclidean`` and ``sqeuclidean`` (the squared distance
    minus the row's constant ``||q||^2``, halved: one pass over the product instead of five for
    ``sqrt(max(||q||^2 + ||g||^2 - 2 q.g, 0))``), ``-cos(q, g)`` for ``cosine``. Orders equal the
    distances' up to float32 rounding: entries within ~1e-7 relative of each other may swap or
    tie differently (ties rank by gallery index). NaN features give NaN keys.

    Args:
        gf: ``(N, D)`` gallery embeddings.
        metric: as :func:`compute_distance_matrix`.

    Returns:
        ``f(qf, out=None)``: ``qf (M, D) -> (M, N)`` float32 keys, smaller is closer, written
        into ``out`` (contiguous float32 on the gallery's device) when given.

    Raises:
        TypeError, ValueError: as :func:`compute_distance_matrix` (checked per block for the query).
    """
    check_features(gf, gf, metric)
    g = gf.float()
    if metric == "cosine":
        negative_gn = F.normalize(g, dim=1).neg_()  # q.(-g) = -(q.g) exactly: no pass over the keys

        def cosine_keys(qf: Tensor, out: Tensor | None = None) -> Tensor:
            check_features(qf, g, metric)
            return _product_into(F.normalize(qf.float(), dim=1), negative_gn, out)

        return cosine_keys
    half_sq = g.pow(2).sum(dim=1).mul_(0.5)  # (N,), exact halving

    def euclidean_keys(qf: Tensor, out: Tensor | None = None) -> Tensor:
        check_features(qf, g, metric)
        product = _product_into(qf.float(), g, out)  # (M, N) q.g
        if product.device.type == "cpu" and not product.requires_grad:
            # numpy's single-threaded pass: no OpenMP pool left spinning beside the rankers
            np.subtract(half_sq.numpy(), product.numpy(), out=product.numpy())
            return product
        return torch.sub(half_sq, product, out=product)

    return euclidean_keys
