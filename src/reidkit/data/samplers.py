"""PK identity sampler (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017)."""

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
