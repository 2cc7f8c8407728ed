"""``torch.utils.data`` wrappers around a :class:`~reidkit.data.ReIDDataset` split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import DataLoader, Dataset

from .base import ReIDDataset, Sample


class ImageDataset(Dataset):
    """Items of one split as ``(image (3, H, W) float, pid int64, camid int64, index int64)``.

    Args:
        samples: the split's ``(img_path, pid, camid)`` items.
        load_image: maps ``img_path`` to a ``PIL.Image`` (usually ``ReIDDataset.load_image``).
        transform: maps the image to a tensor.
    """

    def __init__(self, samples: Sequence[Sample], load_image: Callable, transform: Callable):
        self.samples = list(samples)
        self.load_image = load_image
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, pid, camid = self.samples[i]
        return self.transform(self.load_image(path)), pid, camid, i


def default_num_workers() -> int:
    """Data-loading worker processes: one less than the CPU count, at most 4."""
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))


def train_loader(
    dataset: ReIDDataset,
    transform: Callable,
    sampler,
    num_workers: int | None = None,
) -> DataLoader:
    """A training loader over ``dataset.train`` drawing batches of ``sampler.batch_size`` indices
    from ``sampler`` (a :class:`~reidkit.data.samplers.PKSampler` or a pair sampler)."""
    return DataLoader(
        ImageDataset(dataset.train, dataset.load_image, transform),
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        drop_last=True,
        persistent_workers=False,
    )


def eval_loader(
    samples: Sequence[Sample],
    load_image: Callable,
    transform: Callable,
    batch_size: int = 128,
    num_workers: int | None = None,
) -> DataLoader:
    """An in-order loader over ``samples`` for feature extraction."""
    return DataLoader(
        ImageDataset(samples, load_image, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=default_num_workers() if num_workers is None else num_workers,
    )


