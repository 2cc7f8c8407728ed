"""Training batch samplers: the PK identity sampler (Hermans, Beyer, Leibe, "In Defense of the
Triplet Loss", 2017) and a label-free random sampler (unsupervised methods such as PAUL).

Each sampler states the batch ``layout`` it produces; a loss that needs a layout states it in
``required_layout`` and the trainer refuses a mismatch when the run starts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    """Yields dataset indices so that each batch of ``P * K`` holds P identities x K images.

    Each epoch walks every identity once in a shuffled order (the last incomplete group of P
    identities is dropped), so an epoch has ``num_pids // P`` batches. Identities with fewer than
    ``K`` images are sampled with replacement; others without replacement.

    Args:
        pids: ``(N,)`` the pid of each dataset item, in dataset order.
        num_pids_per_batch: P.
        num_instances: K.
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`), so runs repeat.

    Raises:
        ValueError: P or K below 1, or fewer than P identities.
    """

    layout = "pk"
    """The batch layout produced: P identities x K images (losses may require a layout)."""

    def __init__(self, pids: Sequence[int], num_pids_per_batch: int, num_instances: int, seed: int = 0):
        if num_pids_per_batch < 1 or num_instances < 1:
            raise ValueError(
                f"P (num_pids_per_batch={num_pids_per_batch}) and K (num_instances={num_instances}) must be >= 1"
            )
        index = defaultdict(list)
        for i, pid in enumerate(pids):
            index[int(pid)].append(i)
        if len(index) < num_pids_per_batch:
            raise ValueError(
                f"PKSampler needs at least P={num_pids_per_batch} identities, the data has {len(index)}"
            )
        self.index = {pid: np.asarray(idx) for pid, idx in sorted(index.items())}
        self.p, self.k, self.seed, self.epoch = num_pids_per_batch, num_instances, seed, 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.index) // self.p) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        pids = list(self.index)
        order = rng.permutation(len(pids))
        for start in range(0, len(order) - self.p + 1, self.p):
            for j in order[start : start + self.p]:
                idx = self.index[pids[j]]
                chosen = rng.choice(idx, size=self.k, replace=len(idx) < self.k)
                yield from (int(i) for i in chosen)


class RandomBatchSampler(Sampler[int]):
    """Yields every dataset index once per epoch in a seeded random order, ignoring labels.

    For methods that learn without identity labels (PAUL): batches are ``batch_size`` random
    images; the last incomplete batch is dropped by the loader.

    Args:
        num_items: dataset size N.
        batch_size: images per batch B (>= 2).
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`).

    Raises:
        ValueError: ``batch_size < 2`` or fewer than ``batch_size`` items.
    """

    layout = "random"

    def __init__(self, num_items: int, batch_size: int, seed: int = 0):
        if batch_size < 2 or num_items < batch_size:
            raise ValueError(f"RandomBatchSampler needs 2 <= batch_size <= {num_items} items, got {batch_size}")
        self.num_items, self._batch_size, self.seed, self.epoch = num_items, batch_size, seed, 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.num_items // self._batch_size) * self._batch_size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng(self.seed + self.epoch).permutation(self.num_items)
        yield from (int(i) for i in order[: len(self)])
