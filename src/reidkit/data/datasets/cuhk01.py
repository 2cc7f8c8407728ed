"""CUHK01 (Li, Zhao, Wang, "Human Reidentification with Transferred Metric Learning", ACCV 2012).

Layout as distributed: ``campus/PPPPNNN.png``, person ``PPPP`` = 0001-0971, image ``NNN`` =
001-004; images 001-002 come from camera A (camid 0), 003-004 from camera B (camid 1).
971 identities x 4 images = 3,884 files.

Protocols: 485 train / 486 test identities or 871 / 100, averaged over 10 random identity
splits; query = camera A images of the test identities, gallery = camera B images.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from .. import register_dataset
from ..base import DatasetError, ReIDDataset, Sample
from .market1501 import find_layout

NUM_SPLITS = 10
_NAME = re.compile(r"^(\d{4})(\d{3})\.png$", re.IGNORECASE)
_CAMERAS = {"A": 0, "B": 1}


def _camid(image_no: int, path: str) -> int:
    if not 1 <= image_no <= 4:
        raise DatasetError(f"cuhk01: {path!r} has image number {image_no}; expected 001-004")
    return 0 if image_no <= 2 else 1


def read_campus(folder: str) -> list[Sample]:
    """All ``PPPPNNN.png`` images of ``folder`` as samples (pid = ``PPPP``), sorted by name.

    Raises:
        DatasetError: a ``.png`` name does not parse, or no image is found.
    """
    samples = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(".png"):
            continue
        path = os.path.join(folder, name)
        match = _NAME.match(name)
        if match is None:
            raise DatasetError(f"cuhk01: file name {path!r} is not 'PPPPNNN.png'")
        samples.append(Sample(path, int(match[1]), _camid(int(match[2]), path)))
    if not samples:
        raise DatasetError(f"cuhk01: no PPPPNNN.png image in {folder!r}")
    return samples


def split_identities(pids: list[int], num_test_ids: int, split_id: int) -> set[int]:
    """The test identities of one split.

    The split is ``numpy.random.default_rng(split_id).permutation(sorted(pids))[:num_test_ids]``:
    fixed by ``split_id`` alone, so stable across runs and machines; for one ``split_id`` a
    smaller test set is a subset of a larger one.

    Raises:
        DatasetError: ``split_id`` is not in ``0..9`` or ``num_test_ids`` not in ``1..len(pids)``.
    """
    if not (isinstance(split_id, int) and 0 <= split_id < NUM_SPLITS):
        raise DatasetError(f"cuhk01: split_id={split_id!r}; expected an int in 0..{NUM_SPLITS - 1}")
    if not (isinstance(num_test_ids, int) and 1 <= num_test_ids <= len(pids)):
        raise DatasetError(
            f"cuhk01: num_test_ids={num_test_ids!r}; expected an int in 1..{len(pids)} "
            f"({len(pids)} = all identities for testing, none for training)"
        )
    order = np.random.default_rng(split_id).permutation(np.array(sorted(pids), dtype=np.int64))
    return {int(p) for p in order[:num_test_ids]}


@register_dataset("cuhk01")
def cuhk01(
    root: str | os.PathLike | None = None,
    num_test_ids: int = 486,
    split_id: int = 0,
    query_camera: str = "A",
) -> ReIDDataset:
    """CUHK01 with a seeded identity split.

    Args:
        root: a folder holding ``campus/``, or the ``campus`` folder itself.
        num_test_ids: identities held out for testing: 486 (485/486 protocol), 100 (871/100),
            or any value up to the number of identities; 971 (all) leaves train empty, for
            cross-dataset evaluation.
        split_id: which of the 10 seeded splits (0-9); see :func:`split_identities`.
        query_camera: ``"A"`` or ``"B"``; the other camera forms the gallery.

    Returns:
        Train = all images of the train identities (relabelled); query / gallery = the test
        identities' images of the query / other camera, with their original pids (1-971).

    Raises:
        DatasetError: the folder or a file name is wrong, or an option is out of range.
    """
    if query_camera not in _CAMERAS:
        raise DatasetError(f"cuhk01: query_camera={query_camera!r}; expected 'A' or 'B'")
    folder = find_layout(root, ("campus",), (), "cuhk01")
    if os.path.isdir(os.path.join(folder, "campus")):
        folder = os.path.join(folder, "campus")
    samples = read_campus(folder)
    test_ids = split_identities(sorted({s.pid for s in samples}), num_test_ids, split_id)
    query_cam = _CAMERAS[query_camera]
    splits = defaultdict(list)
    for s in samples:
        key = "train" if s.pid not in test_ids else ("query" if s.camid == query_cam else "gallery")
        splits[key].append(s)
    return ReIDDataset(splits["train"], splits["query"], splits["gallery"], name="cuhk01")
