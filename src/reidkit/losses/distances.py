"""Pairwise distances between two sets of vectors; every distance here is *smaller is closer*.

A distance object is called as ``distance(x, y)`` with ``x: (M, D)`` and ``y: (N, D)`` and returns
the ``(M, N)`` matrix; ``distance(x)`` compares ``x`` with itself. Distances are differentiable and
safe at zero (duplicate vectors give finite gradients), so losses can backpropagate through them.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class Distance(nn.Module):
    """Base class of pairwise distances, smaller is closer; subclasses implement :meth:`compute`.

    Call as ``distance(x, y)`` or ``distance(x)``: see :meth:`forward`.
    """

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Distance matrix between the rows of ``x`` and the rows of ``y``.

        Args:
            x: ``(M, D)`` float vectors.
            y: ``(N, D)`` float vectors of the same dtype; ``x`` itself when omitted.

        Returns:
            ``(M, N)`` distances, smaller is closer.

        Raises:
            ValueError: ``x`` or ``y`` is not a 2-D floating tensor, or their ``D`` or dtype
                differ.
        """
        y = x if y is None else y
        _check_vectors(x, "x")
        _check_vectors(y, "y")
        if x.shape[1] != y.shape[1] or x.dtype != y.dtype:
            raise ValueError(
                f"x and y must have the same D and dtype, got x {tuple(x.shape)} {x.dtype} "
                f"and y {tuple(y.shape)} {y.dtype}"
            )
        return self.compute(x, y)

    def compute(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x: (M, D)``, ``y: (N, D)`` (validated) -> ``(M, N)`` distances, smaller is closer."""
        raise NotImplementedError


class EuclideanDistance(Distance):
    """Euclidean (L2) distance ``||x - y||``, smaller is closer.

    Computed as ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, eps))``: the clamp keeps the gradient of
    ``sqrt`` finite when two vectors coincide (the distance there is ``sqrt(eps)``, about 1e-6).

    Args:
        squared: return ``||x - y||^2`` (clamped at 0, no ``sqrt``).
        normalize: L2-normalise the vectors first (distances then lie in ``[0, 2]``).
        eps: lower clamp of the squared distance before ``sqrt``.
    """

    def __init__(self, squared: bool = False, normalize: bool = False, eps: float = 1e-12):
        super().__init__()
        self.squared = squared
        self.normalize = normalize
        self.eps = eps

    def compute(self, x: Tensor, y: Tensor) -> Tensor:
        """``x: (M, D)``, ``y: (N, D)`` -> ``(M, N)`` Euclidean distances, smaller is closer."""
        if self.normalize:
            x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)  # (M, N)
        if self.squared:
            return sq.clamp_min(0.0)
        return sq.clamp_min(self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"squared={self.squared}, normalize={self.normalize}"


class CosineDistance(Distance):
    """Cosine distance ``1 - cos(x, y)`` in ``[0, 2]``, smaller is closer.

    A zero vector has cosine 0 with everything (distance 1).
    """

    def compute(self, x: Tensor, y: Tensor) -> Tensor:
        """``x: (M, D)``, ``y: (N, D)`` -> ``(M, N)`` cosine distances, smaller is closer."""
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def _check_vectors(v: Tensor, name: str) -> None:
    if not isinstance(v, Tensor) or v.dim() != 2 or not v.is_floating_point():
        got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{name} must be a (num_vectors, D) floating tensor, got {got}")
