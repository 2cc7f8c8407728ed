"""Siamese pair sampler for MSP-CNN (Chen et al., "Multi-Level Similarity Perception Network for
Person Re-Identification", ACM MM 2017): negative and positive pairs in the ratio 2 : 1."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PairSampler(Sampler[int]):
    """Yields dataset indices in batches of Siamese pairs ``(i0, j0, i1, j1, ...)``.

    Each batch of ``batch_size`` indices holds ``n = batch_size // 2`` pairs; exactly
    ``n_pos = round(n / (1 + neg_pos_ratio))`` of them are positive and ``n - n_pos`` negative,
    in a shuffled order (with ``batch_size=60`` or ``48`` and the default ratio 2 the split is
    exactly 2 : 1; with 64 it is 21 : 11). A positive pair is two *different* images of one
    identity: its anchor runs through the images of identities with at least two images in a
    shuffled order, and the partner is drawn uniformly among the anchor's other images. A
    negative pair has an anchor running through all images in a shuffled order and a partner
    drawn uniformly among the images of the other identities. So no pair repeats an index.

    An epoch has ``len(pids) // batch_size`` batches (at least 1), about ``len(pids)`` images,
    like one pass over the data. Epoch ``e`` is seeded with ``seed + e`` (call
    :meth:`set_epoch`), so runs repeat.

    Args:
        pids: ``(N,)`` the pid of each dataset item, in dataset order.
        batch_size: indices per batch; even, ``>= 2``.
        neg_pos_ratio: negative : positive pairs, ``>= 0`` (MSP-CNN: 2).
        seed: base seed.

    Raises:
        ValueError: odd or too small ``batch_size``, a negative or non-finite ratio, no identity
            with two images while positives are needed, or a single identity while negatives
            are needed.
    """

    layout = "pairs"
    """The batch layout produced: Siamese pairs ``(0, 1), (2, 3), ...``."""

    def __init__(
        self, pids: Sequence[int], batch_size: int, neg_pos_ratio: float = 2.0, seed: int = 0
    ):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
        if not 0 <= neg_pos_ratio < math.inf:
            raise ValueError(f"neg_pos_ratio must be a finite number >= 0, got {neg_pos_ratio}")
        self.pids = np.asarray(pids, dtype=np.int64)
        self._batch_size, self.seed, self.epoch = batch_size, seed, 0
        pairs = batch_size // 2
        self.num_pos = int(round(pairs / (1.0 + neg_pos_ratio)))
        self.num_neg = pairs - self.num_pos
        self._index_identities()
        self._check_feasible()

    def _index_identities(self) -> None:
        """Per item: start and size of its identity's block in ``order`` (items sorted by pid),
        and its rank inside the block."""
        self.order = np.argsort(self.pids, kind="stable")  # (N,) items grouped by pid
        _, inverse, counts = np.unique(self.pids, return_inverse=True, return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.block_start, self.block_size = starts[inverse], counts[inverse]  # (N,) each
        self.rank = np.empty(len(self.pids), dtype=np.int64)
        self.rank[self.order] = np.arange(len(self.pids)) - self.block_start[self.order]
        self.positive_anchors = np.flatnonzero(self.block_size >= 2)  # (N_2,)
        self.num_identities = len(counts)

    def _check_feasible(self) -> None:
        if self.num_pos and not len(self.positive_anchors):
            raise ValueError("positive pairs need an identity with at least two images; none has")
        if self.num_neg and self.num_identities < 2:
            raise ValueError("negative pairs need at least two identities")

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        return max(1, len(self.pids) // self._batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self._batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        total_pos, total_neg = self.num_batches * self.num_pos, self.num_batches * self.num_neg
        pos = self._positive_pairs(rng, _stream(rng, self.positive_anchors, total_pos))
        neg = self._negative_pairs(rng, _stream(rng, np.arange(len(self.pids)), total_neg))
        for b in range(self.num_batches):
            pos_b = pos[b * self.num_pos : (b + 1) * self.num_pos]  # (n_pos, 2)
            neg_b = neg[b * self.num_neg : (b + 1) * self.num_neg]  # (n_neg, 2)
            batch = np.concatenate([pos_b, neg_b])  # (n, 2), then pairs in random order
            yield from (int(i) for i in batch[rng.permutation(len(batch))].ravel())

    def _positive_pairs(self, rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
        """``anchors: (M,)`` -> ``(M, 2)`` pairs with another image of the same identity."""
        u = rng.integers(0, self.block_size[anchors] - 1)  # (M,) uniform over the others
        u = u + (u >= self.rank[anchors])  # skip the anchor itself
        return np.stack([anchors, self.order[self.block_start[anchors] + u]], axis=1)

    def _negative_pairs(self, rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
        """``anchors: (M,)`` -> ``(M, 2)`` pairs with an image of another identity."""
        start, size = self.block_start[anchors], self.block_size[anchors]
        u = rng.integers(0, len(self.pids) - size)  # (M,) uniform outside the anchor's block
        u = u + size * (u >= start)
        return np.stack([anchors, self.order[u]], axis=1)


def _stream(rng: np.random.Generator, items: np.ndarray, size: int) -> np.ndarray:
    """``size`` items from consecutive shuffles of ``items`` (each shuffle used in full first)."""
    if size == 0:
        return items[:0]
    reps = -(-size // len(items))
    return np.concatenate([rng.permutation(items) for _ in range(reps)])[:size]
