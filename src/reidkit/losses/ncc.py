"""Low-level similarity by normalised cross-correlation (NCC) of feature-map patches.

MSP-CNN (Chen et al., "Multi-Level Similarity Perception Network for Person Re-Identification",
ACM MM 2017) compares the pool1 maps of the two images of a Siamese pair: every local patch of the
first map is matched to its most similar patch in a wide region of the second map, on roughly the
same height, by NCC (the inexact matching of Subramaniam, Chatterjee, Mittal, "Deep Neural
Networks with Inexact Matching for Person Re-Identification", NIPS 2016). The loss raises the
best-match scores of positive pairs and lowers those of negative pairs, but only above a margin,
so that patterns shared by different people (dark hair) are not forced apart.

NCC of two patch vectors ``u, v`` (each the ``C x ph x pw`` values of one patch, all channels
together) is ``<u - mean(u), v - mean(v)> / (|u - mean(u)| |v - mean(v)|)`` in ``[-1, 1]``,
larger is more similar. A constant patch (``u - mean(u) = 0``, up to rounding; see ``eps`` of
:func:`ncc_best_match`) has NCC 0 with everything, not NaN, and gradients stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import _INTEGER_DTYPES, ReIDLoss
from .combined import register_loss


def ncc_best_match(
    a: Tensor,
    b: Tensor,
    patch: Sequence[int] = (3, 3),
    search: Sequence[int | None] = (5, None),
    stride: int | Sequence[int] | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """For every patch of ``a``, the largest NCC with a patch of ``b`` in its search region.

    Patches of ``a`` are taken on a grid of step ``stride`` (default: the patch size, i.e.
    non-overlapping tiles, each pixel counted once); candidates in ``b`` are *all* patch
    positions (step 1) whose centre lies within ``±(sh // 2)`` rows and ``±(sw // 2)`` columns of
    the ``a`` patch's centre, and inside ``b``. ``search=(5, None)`` is MSP-CNN's "wide region on
    roughly the same height": two rows up or down, any column. Every region contains the patch at
    the same position, so it is never empty. Computed in float32 with autocast disabled; only
    the row band of ``b`` is gathered, so memory and work grow with ``sh``, not with ``H``.

    Args:
        a: ``(N, C, H, W)`` float feature maps of the first images.
        b: ``(N, C, H, W)`` float feature maps of the second images (same shape).
        patch: ``(ph, pw)`` patch size in map cells.
        search: ``(sh, sw)`` search region in map cells; ``None`` for a side means the whole
            height or width.
        stride: step of ``a``'s patch grid, an int or ``(rows, cols)``; ``None`` = ``patch``.
        eps: relative flatness threshold: a patch whose centred norm is at most ``eps`` times
            its uncentred norm (a constant patch, up to float32 rounding of its mean; an
            all-zero patch) has NCC 0 with every patch, and no gradient.

    Returns:
        ``(N, P)`` float32 best-match NCC in ``[-1, 1]`` (larger is more similar), one per patch
        of ``a`` in row-major order, ``P = Ra * Ca`` with ``Ra = (H - ph) // stride_r + 1`` and
        ``Ca = (W - pw) // stride_c + 1``.

    Raises:
        ValueError: ``a`` or ``b`` not a 4-D floating tensor, different shapes, a patch larger
            than the map, or a patch, search or stride value below 1.
    """
    _check_maps(a, b)
    ph, pw = _pair(patch, "patch")
    sr, sc = _pair(patch if stride is None else stride, "stride")
    height, width = a.shape[2:]
    if ph > height or pw > width:
        raise ValueError(f"patch {(ph, pw)} is larger than the {height} x {width} maps")
    half_r, half_c = _search_halves(search, height, width)
    with torch.autocast(device_type=a.device.type, enabled=False):
        a_hat = _unit_patches(a.float(), (ph, pw), (sr, sc), eps)  # (N, D, Ra, Ca)
        b_hat = _unit_patches(b.float(), (ph, pw), (1, 1), eps)  # (N, D, Hb, Wb)
        rows, row_ok = _row_band(a_hat.shape[2], sr, half_r, b_hat.shape[2], a.device)  # (Ra, O)
        band = b_hat[:, :, rows]  # (N, D, Ra, O, Wb)
        scores = torch.einsum("ndrc,ndrok->nrcok", a_hat, band)  # NCC, (N, Ra, Ca, O, Wb)
        col_ok = _column_window(a_hat.shape[3], b_hat.shape[3], sc, half_c, a.device)
        valid = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (Ra, Ca, O, Wb)
        best = scores.masked_fill(~valid, float("-inf")).amax(dim=(3, 4))  # (N, Ra, Ca)
    return best.flatten(1)  # (N, P)


def _unit_patches(x: Tensor, patch: tuple[int, int], stride: tuple[int, int], eps: float) -> Tensor:
    """``x: (N, C, H, W)`` -> centred, unit-norm patch vectors ``(N, C*ph*pw, R, Cols)``;
    flat patches (centred norm ``<= eps`` x uncentred norm) become zero vectors."""
    rows = (x.shape[2] - patch[0]) // stride[0] + 1
    cols = F.unfold(x, patch, stride=stride)  # (N, D, R * Cols)
    centred = cols - cols.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)  # (N, 1, R * Cols)
    flat = norm <= eps * cols.detach().norm(dim=1, keepdim=True)
    scale = torch.where(flat, 0.0, 1.0 / norm.clamp_min(1e-30))  # (N, 1, R * Cols)
    return (centred * scale).unflatten(2, (rows, -1))  # (N, D, R, Cols)


def _row_band(rows_a: int, step: int, half: int, rows_b: int, device) -> tuple[Tensor, Tensor]:
    """Rows of ``b`` within ``±half`` of each ``a`` patch row ``r * step``.

    Returns:
        ``rows: (Ra, O)`` int64 row indices clamped into ``[0, Hb)``, ``O = 2 * half' + 1`` with
        ``half' = min(half, Hb - 1)`` (farther rows never exist), and ``row_ok: (Ra, O)`` bool,
        True where the unclamped row lies inside ``b``.
    """
    half = min(half, rows_b - 1)
    offsets = torch.arange(-half, half + 1, device=device)  # (O,)
    rows = torch.arange(rows_a, device=device)[:, None] * step + offsets  # (Ra, O)
    row_ok = (rows >= 0) & (rows < rows_b)
    return rows.clamp(0, rows_b - 1), row_ok


def _column_window(cols_a: int, cols_b: int, step: int, half: int, device) -> Tensor:
    """``(Ca, Wb)`` bool: ``b`` column ``k`` lies within ``±half`` of ``a`` column ``c * step``."""
    centre = torch.arange(cols_a, device=device)[:, None] * step
    return (torch.arange(cols_b, device=device)[None, :] - centre).abs() <= half


def _search_halves(search: Sequence[int | None], height: int, width: int) -> tuple[int, int]:
    """``(sh // 2, sw // 2)``; a ``None`` side covers the whole map."""
    if len(search) != 2:
        raise ValueError(f"search must be (sh, sw), got {search!r}")
    sizes = zip(search, (height, width))
    rows, cols = (full if s is None else _positive(s, "search") // 2 for s, full in sizes)
    return rows, cols


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return _positive(pair[0], name), _positive(pair[1], name)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} values must be integers >= 1, got {value!r}")
    return value


def _check_map(x: Any, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, C, H, W) floating tensor, got {got}")


def _check_maps(a: Any, b: Any) -> None:
    _check_map(a, "a")
    _check_map(b, "b")
    if a.shape != b.shape:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"a and b must have the same shape, got {shapes}")


@register_loss("ncc")
class NCCLoss(ReIDLoss):
    """MSP-CNN's low-level similarity loss on a batch of Siamese pairs (Chen et al., ACM MM 2017).

    The batch is laid out as pairs ``(0, 1), (2, 3), ...`` (see
    :class:`reidkit.data.pair_sampler.PairSampler`). For pair ``(2i, 2i + 1)`` the scores
    ``s = ncc_best_match(map[2i], map[2i + 1])`` (``(P,)``, NCC in ``[-1, 1]``, larger is more
    similar) give the pair's loss ``mean_p (1 - s_p)`` when the labels agree and
    ``mean_p relu(s_p - neg_margin)`` when they differ. The loss is the mean over the pairs of
    the batch (so positives and negatives weigh by their count: 1 : 2 with MSP-CNN's sampling).

    Called as ``loss(output, labels)`` with ``output`` a :class:`reidkit.models.ReIDOutput` (its
    ``feature_maps[level]``, pool1 for ``mspcnn``, is used); ``input = "output"`` makes
    :class:`reidkit.losses.CombinedLoss` pass the whole output.

    Args:
        patch: ``(ph, pw)`` patch size in map cells (not given by the paper).
        search: ``(sh, sw)`` search region, ``None`` = whole side (see :func:`ncc_best_match`).
        stride: step of the first map's patch grid; ``None`` = the patch size.
        neg_margin: NCC a negative pair may keep without penalty, in ``[-1, 1)`` (not given by
            the paper; 0.5 here).
        level: which ``output.feature_maps`` entry to use (0 = the shallowest).

    Raises:
        ValueError: ``neg_margin`` outside ``[-1, 1)`` or ``level < 0``.
    """

    input = "output"
    required_layout = "pairs"

    def __init__(
        self,
        patch: Sequence[int] = (3, 3),
        search: Sequence[int | None] = (5, None),
        stride: int | Sequence[int] | None = None,
        neg_margin: float = 0.5,
        level: int = 0,
    ):
        super().__init__()
        if not -1.0 <= neg_margin < 1.0:
            raise ValueError(f"neg_margin must lie in [-1, 1), got {neg_margin}")
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        self.patch, self.search = tuple(patch), tuple(search)
        self.stride = stride if stride is None or isinstance(stride, int) else tuple(stride)
        self.neg_margin, self.level = float(neg_margin), int(level)

    def forward(self, output: Any, labels: Tensor) -> Tensor:
        """Validate, then :meth:`compute` on ``output.feature_maps[level]``.

        Args:
            output: an object with ``feature_maps``, a sequence of ``(B, C, H, W)`` float maps.
            labels: ``(B,)`` integer identities, ``B`` even (pairs ``(2i, 2i + 1)``).

        Returns:
            Scalar loss >= 0.

        Raises:
            ValueError: no map at ``level``, a map that is not ``(B, C, H, W)`` float, labels
                that are not ``(B,)`` integer, or ``B`` odd or 0.
        """
        maps = getattr(output, "feature_maps", None)
        if maps is None or len(maps) <= self.level:
            raise ValueError(f"NCCLoss needs output.feature_maps[{self.level}]")
        fmap = maps[self.level]
        _check_pairs(fmap, labels)
        return self.compute(fmap, labels)

    def compute(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """``inputs: (B, C, H, W)``, ``labels: (B,)`` (validated) -> scalar loss."""
        scores = ncc_best_match(
            inputs[0::2], inputs[1::2], self.patch, self.search, self.stride
        )  # (B/2, P)
        same = (labels[0::2] == labels[1::2])[:, None]  # (B/2, 1)
        per_patch = torch.where(same, 1.0 - scores, F.relu(scores - self.neg_margin))
        return per_patch.mean()  # every pair has P patches: mean over pairs of pair means

    def extra_repr(self) -> str:
        return (
            f"patch={self.patch}, search={self.search}, stride={self.stride}, "
            f"neg_margin={self.neg_margin}, level={self.level}"
        )


def _check_pairs(fmap: Any, labels: Any) -> None:
    _check_map(fmap, "the feature map")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"labels must be a (B,) integer tensor, got {labels!r}")
    batch = fmap.shape[0]
    if labels.shape[0] != batch:
        raise ValueError(f"labels has {labels.shape[0]} entries but the batch has B={batch}")
    if batch == 0 or batch % 2:
        raise ValueError(f"NCCLoss needs a batch of Siamese pairs (B even, > 0), got B={batch}")
