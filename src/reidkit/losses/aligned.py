"""AlignedReID's local distance and local triplet loss (Zhang et al., "AlignedReID: Surpassing
Human-Level Performance in Person Re-Identification", arXiv 1711.08184).

Two images with stripe features ``x: (S, C)`` and ``y: (S, C)`` (top to bottom) are compared
through the ``S x S`` matrix of normalised stripe distances

    ``d[i, j] = (e^t - 1) / (e^t + 1) = tanh(t / 2)``,  ``t = ||x_i - y_j||``,

which lies in ``[0, 1)``. The *local distance* is the total of the shortest path from ``(0, 0)``
to ``(S-1, S-1)`` through that matrix, moving right or down: it matches every stripe of one image
with stripes of the other in top-to-bottom order (dynamic alignment), so it lies in
``[0, 2S - 1)``. Every distance here is *smaller is closer*. The path always visits ``2S - 1``
cells, ``S - 1`` of them off the diagonal, so an image's local distance to itself is 0 only when
all its stripes coincide; it is symmetric: ``L(x, y) = L(y, x)``.

:class:`LocalTripletLoss` is the paper's local branch loss: triplets are mined on the *global*
distance, and the triplet loss is applied to the local distances of those pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import ReIDLoss, check_batch
from .combined import register_loss
from .distances import Distance, EuclideanDistance
from .triplet import BatchHardMiner, TripletMiner

_EPS = 1e-12  # lower clamp of squared stripe distances: finite sqrt gradient at 0
MEMORY_BUDGET_BYTES = 256 * 2**20
"""Memory :func:`local_distance_matrix` aims for per block when ``block_size`` is ``None``."""


def shortest_path(dist: Tensor) -> Tensor:
    """Shortest right/down path through square matrices, batched over leading dimensions.

    The path starts at ``(0, 0)``, ends at ``(S-1, S-1)`` and steps one column right or one row
    down; its length is the sum of the elements it visits (both ends included), ``2S - 1`` of
    them. Dynamic programming over rows: with ``c`` the running sum of row ``i``,
    ``best[i, j] = c[j] + min_{k <= j} (best[i-1, k] - c[k] + dist[i, k])``, a cumulative minimum
    over columns. Differentiable: the gradient is 1 on the elements of the chosen path.

    Args:
        dist: ``(..., S, S)`` float matrices, ``S >= 1`` (any values; AlignedReID's are in
            ``[0, 1)``).

    Returns:
        ``(...)`` path lengths, same dtype as ``dist``.

    Raises:
        ValueError: ``dist`` is not a floating tensor whose last two dimensions are equal and
            positive.
    """
    _check_square(dist)
    best = dist[..., 0, :].cumsum(-1)  # (..., S): first row, reached from the left only
    for i in range(1, dist.shape[-1]):
        row = dist[..., i, :]  # (..., S)
        running = row.cumsum(-1)  # (..., S)
        entry = torch.cummin(best - running + row, dim=-1).values  # (..., S)
        best = running + entry
    return best[..., -1]


def local_distance(x: Tensor, y: Tensor) -> Tensor:
    """AlignedReID local distance between every ``x`` and every ``y`` (smaller is closer).

    Memory: ``M * N * S * S`` elements (use :func:`local_distance_matrix` for large galleries).

    Args:
        x: ``(M, S, C)`` float stripe features, top to bottom.
        y: ``(N, S, C)`` float stripe features, same ``S``, ``C`` and dtype.

    Returns:
        ``(M, N)`` local distances in ``[0, 2S - 1)``, differentiable.

    Raises:
        ValueError: an input is not a 3-D floating tensor, or ``S``, ``C`` or dtype differ.
    """
    _check_stripes(x, y)
    (m, s, c), n = x.shape, y.shape[0]
    sq = EuclideanDistance(squared=True)(x.reshape(m * s, c), y.reshape(n * s, c))  # (M*S, N*S)
    return shortest_path(_normalized(sq).view(m, s, n, s).transpose(1, 2))  # (M, N)


def paired_local_distance(x: Tensor, y: Tensor) -> Tensor:
    """AlignedReID local distance between ``x[t]`` and ``y[t]`` for each ``t`` (smaller is closer).

    Args:
        x: ``(T, S, C)`` float stripe features.
        y: ``(T, S, C)`` float stripe features, same shape and dtype.

    Returns:
        ``(T,)`` local distances in ``[0, 2S - 1)``, differentiable.

    Raises:
        ValueError: an input is not a 3-D floating tensor, or the shapes or dtypes differ.
    """
    _check_stripes(x, y)
    if x.shape != y.shape:
        shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
        raise ValueError(f"x and y must have the same shape, got {shapes}")
    norms = (x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :]  # (T, S, S)
    sq = norms - 2.0 * torch.bmm(x, y.transpose(1, 2))  # (T, S, S) squared stripe distances
    return shortest_path(_normalized(sq))


@torch.no_grad()
def local_distance_matrix(q: Tensor, g: Tensor, block_size: int | None = None) -> Tensor:
    """:func:`local_distance` for evaluation: float32, no autograd, one block of queries at a time.

    Args:
        q: ``(M, S, C)`` query stripe features (float or float64/half; computed in float32).
        g: ``(N, S, C)`` gallery stripe features.
        block_size: query rows per block; ``None`` keeps a block's temporaries near
            :data:`MEMORY_BUDGET_BYTES` (about ``32 * block_size * N * S * S``
            bytes: a few float32 ``(block_size, N, S, S)`` temporaries).

    Returns:
        ``(M, N)`` float32 local distances on the inputs' device, smaller is closer.

    Raises:
        ValueError: bad shapes (as :func:`local_distance`) or ``block_size`` not a positive
            integer.
    """
    _check_stripes(q, g)
    q, g = q.float(), g.float()
    (m, s, _), n = q.shape, g.shape[0]
    if block_size is None:
        block_size = max(1, MEMORY_BUDGET_BYTES // (32 * max(n, 1) * s * s))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    out = q.new_empty(m, n)
    for start in range(0, m, block_size):
        out[start : start + block_size] = local_distance(q[start : start + block_size], g)
    return out


def _normalized(sq: Tensor) -> Tensor:
    """Squared stripe distances ``t^2`` -> ``(e^t - 1) / (e^t + 1) = tanh(t / 2)``, same shape."""
    return torch.tanh(sq.clamp_min(_EPS).sqrt() / 2.0)


def _check_square(dist: Tensor) -> None:
    ok = isinstance(dist, Tensor) and dist.is_floating_point() and dist.dim() >= 2
    if not ok or dist.shape[-1] != dist.shape[-2] or dist.shape[-1] < 1:
        is_tensor = isinstance(dist, Tensor)
        got = f"{tuple(dist.shape)} {dist.dtype}" if is_tensor else type(dist).__name__
        raise ValueError(f"dist must be a floating (..., S, S) tensor with S >= 1, got {got}")


def _check_stripes(x: Tensor, y: Tensor) -> None:
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, Tensor) or v.dim() != 3 or not v.is_floating_point():
            got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name} must be a (num, S, C) floating tensor, got {got}")
    if x.shape[1:] != y.shape[1:] or x.dtype != y.dtype or x.shape[1] < 1:
        raise ValueError(
            f"x and y must have the same S >= 1, C and dtype, got x {tuple(x.shape)} {x.dtype} "
            f"and y {tuple(y.shape)} {y.dtype}"
        )


class LocalTripletLoss(ReIDLoss):
    """AlignedReID's local triplet loss: pairs mined on global features, loss on local distances.

    For the triplets the miner picks on the global distance of ``output.feature`` (batch-hard by
    default: per anchor the farthest positive and the closest negative), the loss is
    ``reduce_t(relu(L(a_t, p_t) - L(a_t, n_t) + margin))`` with ``L`` the
    :func:`paired_local_distance` of ``output.local_feature``. As in the paper, the local distance
    never chooses the pairs. A batch without a valid triplet gives ``0`` (still in the graph).

    Called as ``loss(output, labels)`` (``input = "output"``, so :class:`CombinedLoss` passes the
    whole :class:`reidkit.models.ReIDOutput`); returns a scalar.

    Args:
        margin: ``alpha >= 0`` (0.3 in the paper).
        distance: the global distance for mining (smaller is closer); ``EuclideanDistance()``.
        mining: a :class:`TripletMiner`; ``BatchHardMiner()`` when ``None``.

    Raises:
        ValueError: negative ``margin``.
        TypeError: ``distance`` is not a ``Distance`` or ``mining`` not a ``TripletMiner``.
    """

    input = "output"

    def __init__(
        self,
        margin: float = 0.3,
        distance: Distance | None = None,
        mining: TripletMiner | None = None,
    ):
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.distance = EuclideanDistance() if distance is None else distance
        self.mining = BatchHardMiner() if mining is None else mining
        if not isinstance(self.distance, Distance):
            raise TypeError(f"distance must be a Distance, got {type(self.distance).__name__}")
        if not isinstance(self.mining, TripletMiner):
            raise TypeError(f"mining must be a TripletMiner, got {type(self.mining).__name__}")
        self.margin = float(margin)

    def forward(self, output: Any, labels: Tensor) -> Tensor:
        """Validate, then :meth:`compute`.

        Args:
            output: a :class:`reidkit.models.ReIDOutput` (or any object) with ``feature: (B, D)``
                float and ``local_feature: (B, S, C_l)`` float, ``B >= 2``.
            labels: ``(B,)`` integer identities.

        Returns:
            Scalar loss.

        Raises:
            TypeError: ``output.feature`` or ``labels`` is not a tensor.
            ValueError: ``output.local_feature`` is missing (a model without local branch) or
                a shape or dtype is wrong.
        """
        local = getattr(output, "local_feature", None)
        if local is None:
            raise ValueError(
                "aligned local triplet loss needs output.local_feature; use an AlignedReID model "
                "(e.g. resnet50_aligned)"
            )
        check_batch(getattr(output, "feature", None), labels, name="output.feature", min_batch=2)
        if not isinstance(local, Tensor) or local.dim() != 3 or local.shape[0] != labels.shape[0]:
            got = tuple(local.shape) if isinstance(local, Tensor) else type(local).__name__
            raise ValueError(f"output.local_feature must be (B={labels.shape[0]}, S, C), got {got}")
        return self.compute(output, labels)

    def compute(self, output: Any, labels: Tensor) -> Tensor:
        """``output`` with ``feature: (B, D)``, ``local_feature: (B, S, C)`` (validated),
        ``labels: (B,)`` -> scalar loss."""
        local = output.local_feature
        with torch.no_grad():
            global_dist = self.distance(output.feature.detach())  # (B, B), smaller is closer
        anchor, pos, neg = self.mining.mine(global_dist, labels)
        if anchor.numel() == 0:
            return local.sum() * 0.0
        d_ap = paired_local_distance(local[anchor], local[pos])  # (T,)
        d_an = paired_local_distance(local[anchor], local[neg])  # (T,)
        return self.mining.reduce(F.relu(d_ap - d_an + self.margin))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"


@register_loss("aligned_local_triplet")
def _local_triplet_from_config(margin: float = 0.3) -> LocalTripletLoss:
    """:class:`LocalTripletLoss` with Euclidean batch-hard mining on global features."""
    return LocalTripletLoss(margin=margin)
