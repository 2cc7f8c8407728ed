"""Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

Layout as distributed::

    Market-1501-v15.09.15/
        bounding_box_train/   12,936 images, 751 identities
        query/                 3,368 images, 750 identities
        bounding_box_test/    19,732 images (incl. pid 0000 distractors and pid -1 junk)

File names are ``PPPP_cCsS_FFFFFF_NN.jpg``: person id ``PPPP`` (``-1`` junk, ``0000``
distractor), camera ``C`` counted from 1, sequence ``S``, frame ``FFFFFF``, box ``NN``.
The helpers here also serve DukeMTMC-reID, which uses the same names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from .. import register_dataset
from ..base import DatasetError, ReIDDataset, Sample

MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def find_layout(root: str | os.PathLike | None, subfolders: Sequence[str], required: Sequence[str],
                dataset: str) -> str:
    """Return the first of ``root`` and ``root/<subfolder>`` that holds every ``required`` entry.

    Raises:
        DatasetError: ``root`` is ``None`` or missing, or no candidate holds the layout; the
            message lists the folders tried and the entries expected.
    """
    if root is None:
        raise DatasetError(f"{dataset}: root is required (the folder that holds the dataset)")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{dataset}: root {root!r} is not a directory")
    candidates = [root] + [os.path.join(root, sub) for sub in subfolders]
    for cand in candidates:
        if all(os.path.exists(os.path.join(cand, name)) for name in required):
            return cand
    raise DatasetError(
        f"{dataset}: none of {candidates} holds {list(required)}; point root at the dataset folder"
    )


def parse_market_dir(path: str, dataset: str, camid_base: int = 1) -> list[Sample]:
    """Read the ``*.jpg`` files of one folder with Market-1501 file names.

    Args:
        path: folder of ``PPPP_cC...jpg`` images (not searched recursively).
        dataset: dataset name for error messages.
        camid_base: the number of the first camera in the file names (subtracted).

    Returns:
        Samples sorted by file name; ``camid`` is 0-based.

    Raises:
        DatasetError: ``path`` is not a directory, or a ``.jpg`` name does not parse.
    """
    if not os.path.isdir(path):
        raise DatasetError(f"{dataset}: {path!r} is not a directory")
    samples = []
    for name in sorted(os.listdir(path)):
        if not name.lower().endswith(".jpg"):
            continue
        match = _MARKET_NAME.match(name)
        if match is None:
            raise DatasetError(
                f"{dataset}: file name {os.path.join(path, name)!r} is not Market-style "
                f"'PPPP_cC...jpg' (pattern {_MARKET_NAME.pattern!r})"
            )
        pid, camid = int(match[1]), int(match[2]) - camid_base
        samples.append(Sample(os.path.join(path, name), pid, camid))
    return samples


def load_market_style(folder: str, name: str) -> ReIDDataset:
    """Build a dataset from ``bounding_box_train``, ``query`` and ``bounding_box_test``."""
    train, query, gallery = (parse_market_dir(os.path.join(folder, s), name) for s in MARKET_SPLITS)
    return ReIDDataset(train, query, gallery, name=name)


@register_dataset("market1501")
def market1501(root: str | os.PathLike | None = None) -> ReIDDataset:
    """Market-1501 in its official layout.

    Args:
        root: a folder holding ``Market-1501-v15.09.15/`` (directly or under ``market1501/``)
            or the three split folders themselves.

    Returns:
        The dataset; junk (pid -1) stays in the gallery, distractors keep pid 0.

    Raises:
        DatasetError: the folders are missing, a file name does not parse, or a split is empty.
    """
    release = "Market-1501-v15.09.15"
    subs = (release, "market1501", os.path.join("market1501", release))
    folder = find_layout(root, subs, MARKET_SPLITS, "market1501")
    return load_market_style(folder, "market1501")
