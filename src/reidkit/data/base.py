"""The dataset data model: three lists of ``(img_path, pid, camid)``.

Follows torchreid's data model (Zhou et al.): a dataset is ``train``, ``query`` and ``gallery``
lists of ``(img_path, pid, camid)`` tuples. The base class relabels training identities to
``0..num_train_pids-1``, validates the lists and prints per-split statistics. Adding a dataset is
one small function registered with :func:`reidkit.data.register_dataset` that builds the three
lists and returns a :class:`ReIDDataset`.

Conventions:
    * ``pid`` is an ``int``; ``-1`` marks junk images and ``0`` distractors in formats that have
      them (Market-1501, DukeMTMC-reID). Junk is dropped from ``train``; evaluation ignores junk
      gallery items (Market-1501 protocol).
    * ``camid`` is a 0-based ``int`` (file formats that count cameras from 1 are shifted by the
      loader).
    * ``img_path`` is a ``str``. For on-the-fly datasets (``synthetic``) it is a key that the
      dataset's :meth:`ReIDDataset.load_image` understands rather than a file.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class Sample(NamedTuple):
    """One image of a ReID dataset (a plain tuple, so ``img_path, pid, camid = sample`` works)."""

    img_path: str
    pid: int
    camid: int


class DatasetError(ValueError):
    """A dataset's files or lists are not what the loader expects; the message names them."""


class ImageReadError(OSError):
    """An image file could not be read or decoded; ``.path`` names it, ``.reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"cannot read image {self.path!r}: {self.reason}"

    def __reduce__(self):
        return type(self), (self.path, self.reason)


MAX_IMAGE_PIXELS = 40_000_000
"""Largest image (width x height, pixels) :func:`read_image` decodes; a bigger header is refused
before decoding (a "decompression bomb" declares a huge size in a tiny file). Person crops are
far smaller; a whole 4K frame has 8.3 M pixels."""


# read_image refuses big images itself, before PIL's own (higher) bomb warning would fire.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image(path: str, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as RGB, safely.

    Only regular files are opened (a FIFO, device or folder named like an image would block or
    fail); the header's size is checked against ``max_pixels`` before decoding; EXIF orientation
    is applied (a phone JPEG shot upright reads upright); palette, grayscale, CMYK, 16-bit and
    alpha images are converted to 8-bit RGB.

    Args:
        path: file path.
        max_pixels: largest width x height accepted; ``None`` uses :data:`MAX_IMAGE_PIXELS`.

    Returns:
        A fully decoded RGB ``PIL.Image.Image``.

    Raises:
        ImageReadError: the file is missing, not a regular file, too large, not an image,
            truncated or corrupt; the message names the file and the reason.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    _check_regular_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > limit:
                raise ImageReadError(path, f"{width} x {height} pixels is above the limit of {limit:,} pixels")
            img.load()  # forces the full decode, so truncated files fail here
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(path, f"its header declares more than the limit of {limit:,} pixels (a decompression bomb?)") from None
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError,
            IndexError, KeyError, struct.error, ZeroDivisionError, MemoryError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {' '.join(str(err).split())}") from None


def _check_regular_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as err:
        raise ImageReadError(path, err.strerror or type(err).__name__) from None
    if not stat.S_ISREG(mode):
        raise ImageReadError(path, "not a regular file (a folder, FIFO, socket or device)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit, 32-bit and float grayscale are scaled to 0-255
    (16-bit by 1/257, the others by their maximum), transparency is composed on black."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(values.max(initial=0)), 1.0)
        img = Image.fromarray(np.clip(values * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _to_samples(items: Sequence, split: str, dataset: str) -> list[Sample]:
    out = []
    for i, item in enumerate(items):
        try:
            path, pid, camid = item
        except (TypeError, ValueError):
            raise DatasetError(
                f"{dataset}: {split}[{i}] is {item!r}; expected a (img_path, pid, camid) tuple"
            ) from None
        out.append(Sample(str(path), int(pid), int(camid)))
    return out


class ReIDDataset:
    """A person ReID dataset: ``train``, ``query`` and ``gallery`` lists of :class:`Sample`.

    Args:
        train: ``(img_path, pid, camid)`` items used for training (may be empty when the dataset
            is only evaluated). Junk items (``pid == -1``) are dropped.
        query: query items; must not be empty.
        gallery: gallery items; must not be empty.
        name: dataset name shown by ``repr``.
        relabel: map training pids to ``0..num_train_pids-1`` (sorted by original pid), as
            classification losses need. The original pid is kept in :attr:`train_pid_map`.
        allow_empty_eval: accept empty query and gallery lists (a training-only dataset that is
            evaluated on another one).

    Raises:
        DatasetError: query or gallery is empty (unless ``allow_empty_eval``), or an item is not
            a 3-tuple.
    """

    def __init__(
        self,
        train: Sequence,
        query: Sequence,
        gallery: Sequence,
        name: str = "dataset",
        relabel: bool = True,
        allow_empty_eval: bool = False,
    ):
        self.name = name
        train = [s for s in _to_samples(train, "train", name) if s.pid != -1]
        self.query = _to_samples(query, "query", name)
        self.gallery = _to_samples(gallery, "gallery", name)
        if not self.query and not allow_empty_eval:
            raise DatasetError(f"{name}: the query split is empty; evaluation needs query images")
        if not self.gallery and not allow_empty_eval:
            raise DatasetError(f"{name}: the gallery split is empty; evaluation needs gallery images")
        self.relabel = relabel
        self.train_pid_map: dict[int, int] = {}
        self.train = self._relabelled(train, {}) if relabel else train
        if not relabel:
            self.train_pid_map = {pid: pid for pid in sorted({s.pid for s in train})}

    def _relabelled(self, train: list[Sample], previous: dict[int, int]) -> list[Sample]:
        """``train`` with pids mapped to ``0..n-1`` (sorted); updates :attr:`train_pid_map`
        (original pid -> label), composing with ``previous`` when the pids were labels already."""
        pids = sorted({s.pid for s in train})
        label = {pid: i for i, pid in enumerate(pids)}
        original = {v: k for k, v in previous.items()} if previous else {p: p for p in pids}
        self.train_pid_map = {original[p]: label[p] for p in pids}
        return [Sample(s.img_path, label[s.pid], s.camid) for s in train]

    def original_train_pids(self) -> list[int]:
        """The pid of each :attr:`train` item as in the source files (before relabelling)."""
        back = {label: pid for pid, label in self.train_pid_map.items()}
        return [back[s.pid] for s in self.train]

    # ------------------------------------------------------------------ statistics
    @staticmethod
    def _stats(items: Sequence[Sample]) -> tuple[int, int, int]:
        return len({s.pid for s in items}), len(items), len({s.camid for s in items})

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the classifier's output size)."""
        return len({s.pid for s in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({s.camid for s in self.train})

    def __repr__(self) -> str:
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        lines = [f"{self.name}", "  subset   | # ids | # images | # cameras", "  " + "-" * 38]
        for split, items in rows:
            ids, imgs, cams = self._stats(items)
            lines.append(f"  {split:<8} | {ids:5d} | {imgs:8d} | {cams:9d}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ images
    def load_image(self, img_path: str) -> Image.Image:
        """Return the RGB image of ``img_path`` (a file here; subclasses may render it).

        Raises:
            ImageReadError: the image cannot be read.
        """
        return read_image(img_path)

    def check_images(self, skip_unreadable: bool = False) -> list[str]:
        """Decode every image of every split once and report the unreadable ones.

        Args:
            skip_unreadable: drop unreadable images from the splits (with one warning that lists
                them) instead of raising.

        Returns:
            The paths that could not be read (empty when all are fine).

        Raises:
            ImageReadError: an image cannot be read and ``skip_unreadable`` is false; the message
                lists every bad path found.
        """
        bad = []
        for path in sorted({s.img_path for s in self.train + self.query + self.gallery}):
            try:
                self.load_image(path)
            except ImageReadError as err:
                bad.append((path, str(err)))
        if bad and not skip_unreadable:
            listing = "\n  ".join(msg for _, msg in bad)
            raise ImageReadError(bad[0][0], f"{len(bad)} unreadable image(s):\n  {listing}")
        if bad:
            badset = {p for p, _ in bad}
            warnings.warn(
                f"{self.name}: skipping {len(bad)} unreadable image(s): " + ", ".join(sorted(badset)),
                stacklevel=2,
            )
            train = [s for s in self.train if s.img_path not in badset]
            self.train = self._relabelled(train, self.train_pid_map) if self.relabel else train
            self.query = [s for s in self.query if s.img_path not in badset]
            self.gallery = [s for s in self.gallery if s.img_path not in badset]
        return [p for p, _ in bad]


def require_dir(path: str | os.PathLike, what: str) -> str:
    """Return ``path`` as ``str`` if it is a directory.

    Raises:
        DatasetError: naming ``path`` and ``what`` it was expected to hold.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DatasetError(f"{path!r} is not a directory; expected {what}")
    return path
