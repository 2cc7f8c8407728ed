"""PEDAL, PAUL's patch-based discriminative feature learning loss, and its patch memory bank.

Yang et al., "Patch-Based Discriminative Feature Learning for Unsupervised Person
Re-identification", CVPR 2019, the PEDAL section; reference code github.com/QizeYang/PAUL
(``src/loss/myloss.py::Pedal``, ``src/loss/smooth.py::PatchMemory``).

The bank holds, for every training image i and patch m, an L2-normalised feature ``mem[m, i]``.
For patch m of a batch image i with L2-normalised feature x (cosine similarity, larger is
closer)::

    L_m(i) = log sum_{j != i} exp(s * mem[m, j] . x) - log sum_{j in N_k(i)} exp(s * mem[m, j] . x)

where ``N_k(i)`` are the k entries most similar to x among ``j != i`` (the image's own entry is
left out of both sums, as in the code). PEDAL is the mean of ``L_m(i)`` over the batch and the M
patches. After each step, ``mem[m, i] <- normalise((1 - l) * mem[m, i] + l * x)``.

Values: k = 10, l = 0.1 (paper, implementation details; code ``--mm 0.1``); s = 30 for
Market-1501 and 10 for DukeMTMC-reID (paper, as summarised by seed 003). The code writes the
loss with squared Euclidean distances, ``exp(-s' ||x - m||^2)``, with ``s' = 15`` (Market) and
``5`` (Duke) in its README; on unit vectors ``||x - m||^2 = 2 - 2 x . m``, so that is this
formula with ``s = 2 s'``, the paper's values. The code does not re-normalise the memory after
the momentum update; the update here does, as the paper's (METHODS.md section 5).

Initialisation (code ``unsupervised_train.py``): one pass over the target training set, with the
model in train mode and no gradients, writes every image's features into the bank
(:meth:`PatchMemoryBank.fill`); the code's bank holds only images seen so far, so here entries not
yet written (``filled`` is False) take no part in the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PatchMemoryBank(nn.Module):
    """The patch feature memory of PEDAL; ``bank(patch_feats, indices)`` is :meth:`loss`.

    The bank is a float32 buffer ``memory: (M, N, d)`` plus ``filled: (N,)`` bool, both in
    ``state_dict()`` so a resumed run continues exactly. Its size is ``N * M * d * 4`` bytes
    (:meth:`nbytes`): 614 MB for 10^5 images of 6 patches of 256-d. The loss compares the batch
    with the bank one patch at a time, so the largest temporary is one ``(B, N)`` similarity
    matrix (16 MB for B = 40, N = 10^5), of which autograd keeps one per patch until the
    backward pass (96 MB for M = 6).

    Args:
        num_images: N, the training images; a batch's ``indices`` are their positions in the
            training set, in ``[0, N)``.
        num_patches: M.
        dim: d, the size of every patch feature.
        k: nearest memory entries pulled closer (10 in the paper).
        scale: s, the inverse temperature on cosine similarities (30 Market, 10 Duke).
        momentum: l of the memory update (0.1 in the paper).

    Raises:
        ValueError: a size or ``k`` is not a positive integer, ``scale <= 0`` or ``momentum``
            outside ``(0, 1]``.
    """

    def __init__(
        self, num_images: int, num_patches: int, dim: int, k: int = 10, scale: float = 30.0, momentum: float = 0.1
    ):
        super().__init__()
        for name, value in (("num_images", num_images), ("num_patches", num_patches), ("dim", dim), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.k, self.scale, self.momentum = k, float(scale), float(momentum)
        self.register_buffer("memory", torch.zeros(num_patches, num_images, dim))
        self.register_buffer("filled", torch.zeros(num_images, dtype=torch.bool))

    @staticmethod
    def nbytes(num_images: int, num_patches: int, dim: int) -> int:
        """Bytes of the ``memory`` buffer for these sizes (float32), e.g. 614,400,000 for
        ``(10**5, 6, 256)``."""
        return num_images * num_patches * dim * 4

    def fill(self, patch_feats: Tensor, indices: Tensor) -> None:
        """Write the L2-normalised features of images ``indices`` (no momentum), as the code's
        initial pass over the training set.

        Args:
            patch_feats: ``(B, M, d)`` float patch features.
            indices: ``(B,)`` int64 distinct training-set positions in ``[0, N)``.

        Raises:
            ValueError: bad shapes, dtypes, repeated or out-of-range indices.
        """
        indices = self._check(patch_feats, indices)
        with torch.no_grad():
            x = F.normalize(patch_feats.detach().float(), dim=2).transpose(0, 1)  # (M, B, d)
            self.memory[:, indices] = x.to(self.memory.dtype)
            self.filled[indices] = True

    def update(self, patch_feats: Tensor, indices: Tensor) -> None:
        """Momentum update after a step: ``mem <- normalise((1 - l) mem + l x)``, x the
        normalised feature; an entry not yet filled becomes ``x``. No gradient flows.

        Args:
            patch_feats: ``(B, M, d)`` float patch features of the batch images.
            indices: ``(B,)`` int64 distinct training-set positions in ``[0, N)``.

        Raises:
            ValueError: bad shapes, dtypes, repeated or out-of-range indices.
        """
        indices = self._check(patch_feats, indices)
        with torch.no_grad():
            x = F.normalize(patch_feats.detach().float(), dim=2).transpose(0, 1)  # (M, B, d)
            old = self.memory[:, indices]  # (M, B, d)
            keep = self.filled[indices][None, :, None]  # (1, B, 1)
            mixed = torch.where(keep, (1.0 - self.momentum) * old + self.momentum * x, x)
            self.memory[:, indices] = F.normalize(mixed, dim=2)
            self.filled[indices] = True

    def loss(self, patch_feats: Tensor, indices: Tensor) -> Tensor:
        """PEDAL for a batch against the bank (see the module docstring); the bank is constant.

        Args:
            patch_feats: ``(B, M, d)`` float patch features (normalised here).
            indices: ``(B,)`` int64 distinct training-set positions of the batch images.

        Returns:
            Scalar loss, ``>= 0``; computed in float32.

        Raises:
            ValueError: bad shapes, dtypes, repeated or out-of-range indices.
            RuntimeError: fewer than ``k + 1`` entries are filled (call :meth:`fill` first).
        """
        indices = self._check(patch_feats, indices)
        n_filled = int(self.filled.sum())
        if n_filled < self.k + 1:
            raise RuntimeError(
                f"PatchMemoryBank holds {n_filled} filled entries, PEDAL with k={self.k} needs at least "
                f"{self.k + 1}: fill() the bank over the training set first"
            )
        x = F.normalize(patch_feats.float(), dim=2)  # (B, M, d)
        invalid = ~self.filled[None, :].expand(x.shape[0], -1).clone()  # (B, N)
        invalid[torch.arange(x.shape[0], device=x.device), indices] = True  # leave out the image itself
        with torch.autocast(x.device.type, enabled=False):
            per_patch = [self._patch_loss(x[:, m], self.memory[m], invalid) for m in range(x.shape[1])]
        return torch.stack(per_patch).mean()

    def forward(self, patch_feats: Tensor, indices: Tensor) -> Tensor:
        """Same as :meth:`loss`."""
        return self.loss(patch_feats, indices)

    def _patch_loss(self, x: Tensor, mem: Tensor, invalid: Tensor) -> Tensor:
        """``x: (B, d)``, ``mem: (N, d)``, ``invalid: (B, N)`` -> mean over the batch of L_m."""
        logits = (self.scale * x) @ mem.T  # (B, N); autograd keeps this one (B, N) matrix
        logits.masked_fill_(invalid, float("-inf"))
        nearest = logits.topk(self.k, dim=1).values  # (B, k)
        return (logits.logsumexp(dim=1) - nearest.logsumexp(dim=1)).mean()

    def _check(self, patch_feats: Tensor, indices: Tensor) -> Tensor:
        """Validate the arguments; return ``indices`` on the bank's device."""
        m, n, d = self.memory.shape
        if not isinstance(patch_feats, Tensor) or patch_feats.dim() != 3 or tuple(patch_feats.shape[1:]) != (m, d):
            got = tuple(patch_feats.shape) if isinstance(patch_feats, Tensor) else type(patch_feats).__name__
            raise ValueError(f"patch_feats must be (B, {m}, {d}) for this bank, got {got}")
        if not patch_feats.is_floating_point():
            raise ValueError(f"patch_feats must be floating point, got {patch_feats.dtype}")
        b = patch_feats.shape[0]
        if not isinstance(indices, Tensor) or indices.dtype != torch.int64 or tuple(indices.shape) != (b,):
            got = f"{tuple(indices.shape)} {indices.dtype}" if isinstance(indices, Tensor) else type(indices).__name__
            raise ValueError(f"indices must be a ({b},) int64 tensor of dataset positions, got {got}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise ValueError(f"indices must lie in [0, {n}), got [{int(indices.min())}, {int(indices.max())}]")
        if indices.unique().numel() != indices.numel():
            raise ValueError("indices must be distinct within a batch (one entry per training image)")
        return indices.to(self.memory.device)

    def extra_repr(self) -> str:
        m, n, d = self.memory.shape
        return f"num_images={n}, num_patches={m}, dim={d}, k={self.k}, scale={self.scale}, momentum={self.momentum}"
