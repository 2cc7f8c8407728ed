"""``torch.utils.data`` wrappers around a :class:`~reidkit.data.ReIDDataset` split.

With ``data.cache: memory`` the training images are decoded once into an :class:`ImageCache`
(uint8 tensors) that the loader reads instead of the files; the same transforms run on them
(torchvision's v2 transforms turn a PIL image into a uint8 tensor first and augment the tensor),
so the batches are the same.

An image that cannot be read inside a loader worker process does not surface as torch's
``RuntimeError: Caught ImageReadError in DataLoader worker process 0`` with the worker's
traceback: the worker hands back a marker naming the file, and :class:`ReIDLoader` raises the
original :class:`~reidkit.data.ImageReadError` in the main process, so every caller gets one
clear message naming the file, whether ``num_workers`` is 0 or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms.v2.functional import pil_to_tensor

from .base import ImageReadError, ReIDDataset, Sample


class Unreadable(NamedTuple):
    """What a worker returns for an image it cannot read (picklable, no traceback)."""

    path: str
    reason: str


class ImageDataset(Dataset):
    """Items of one split as ``(image (3, H, W) float, pid int64, camid int64, index int64)``.

    An unreadable image yields an :class:`Unreadable` marker instead (turned back into
    :class:`~reidkit.data.ImageReadError` by :class:`ReIDLoader`).

    Args:
        samples: the split's ``(img_path, pid, camid)`` items.
        load_image: maps ``img_path`` to a ``PIL.Image`` (usually ``ReIDDataset.load_image``) or
            to a ``(3, H, W)`` uint8 tensor (an :class:`ImageCache`).
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
        try:
            image = self.load_image(path)
        except ImageReadError as err:
            return Unreadable(err.path, err.reason)
        return self.transform(image), pid, camid, i


class CacheTooLarge(MemoryError):
    """The decoded images would take more memory than the cache may hold."""


class ImageCache:
    """Images decoded once and held in memory: ``cache(img_path) -> (3, H, W) uint8`` tensor.

    A stand-in for ``ReIDDataset.load_image`` in :class:`ImageDataset`: the loader then reads no
    file and decodes nothing. Each call returns a copy, so a transform working in place cannot
    change the cache. The transform must take tensors (torchvision's v2 transforms do; their
    ``ToImage`` step turns a PIL image into exactly this tensor).

    Args:
        paths: the images to hold (duplicates are decoded once).
        load_image: maps a path to a ``PIL.Image`` (``ReIDDataset.load_image``).
        max_bytes: the most memory the decoded images may take (``None``: no limit).

    Raises:
        CacheTooLarge: the images need more than ``max_bytes`` (raised as soon as the running
            total passes it, before the rest is decoded).
        ImageReadError: an image cannot be read (naming it).
    """

    def __init__(self, paths: Sequence[str], load_image: Callable, max_bytes: int | None = None):
        self.images: dict[str, torch.Tensor] = {}
        self.nbytes = 0
        unique = list(dict.fromkeys(paths))
        for n, path in enumerate(unique):
            image = pil_to_tensor(load_image(path))  # (3, H, W) uint8
            self.nbytes += image.numel() * image.element_size()
            if max_bytes is not None and self.nbytes > max_bytes:
                raise CacheTooLarge(
                    f"the decoded images pass {max_bytes / 2**20:.0f} MiB after {n + 1} of {len(unique)} images"
                )
            self.images[path] = image

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, img_path: str) -> torch.Tensor:
        return self.images[img_path].clone()


def collate_or_report(items: list):
    """``default_collate``, unless an item is :class:`Unreadable`: then that marker."""
    for item in items:
        if isinstance(item, Unreadable):
            return item
    return default_collate(items)


class ReIDLoader(DataLoader):
    """A ``DataLoader`` that raises :class:`~reidkit.data.ImageReadError` (naming the file) in
    the main process when a worker could not read an image.

    Raises:
        ImageReadError: while iterating, for the first unreadable image of a batch.
    """

    def __iter__(self) -> Iterator:
        for batch in super().__iter__():
            if isinstance(batch, Unreadable):
                raise ImageReadError(batch.path, batch.reason)
            yield batch


def default_num_workers() -> int:
    """Data-loading worker processes: one less than the CPU count, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def extraction_workers(eval_workers: int | None = None, data_workers: int | None = None) -> int:
    """Data-loading worker processes for feature extraction (``eval.num_workers``).

    ``eval_workers`` when given; else none on machines with 2 CPUs or fewer, where a worker
    process decoding beside the model takes a core from it: files to features of OSNet x1.0 in
    onnxruntime ran at 41.2 images/s with images decoded between batches against 36.7 with one
    worker (torch eager 26.0 against 26.8; ``benchmarks/bench_extract.py --workers 0|1``, 2-core
    AMD EPYC); else ``data_workers``, or :func:`default_num_workers` when that is ``None``.
    """
    if eval_workers is not None:
        return eval_workers
    if (os.cpu_count() or 1) <= 2:
        return 0
    return default_num_workers() if data_workers is None else data_workers


def train_loader(
    dataset: ReIDDataset,
    transform: Callable,
    sampler,
    num_workers: int | None = None,
    images: Callable | None = None,
) -> ReIDLoader:
    """A training loader over ``dataset.train`` drawing batches of ``sampler.batch_size`` indices
    from ``sampler`` (a :class:`~reidkit.data.samplers.PKSampler` or a pair sampler).

    ``images`` maps an ``img_path`` to its image (an :class:`ImageCache`); ``None``: the
    dataset's ``load_image`` (files decoded every epoch)."""
    return ReIDLoader(
        ImageDataset(dataset.train, dataset.load_image if images is None else images, transform),
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        drop_last=True,
        persistent_workers=False,
        collate_fn=collate_or_report,
    )


def eval_loader(
    samples: Sequence[Sample],
    load_image: Callable,
    transform: Callable,
    batch_size: int = 128,
    num_workers: int | None = None,
) -> ReIDLoader:
    """An in-order loader over ``samples`` for feature extraction; ``num_workers=None``:
    :func:`extraction_workers`."""
    return ReIDLoader(
        ImageDataset(samples, load_image, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=extraction_workers(num_workers),
        collate_fn=collate_or_report,
    )
