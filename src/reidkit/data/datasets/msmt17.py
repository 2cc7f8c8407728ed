"""MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification",
CVPR 2018).

Two distributed layouts (V2 blurs faces; the lists are the same)::

    MSMT17_V1/{train,test}/                  + list_train.txt list_val.txt
    MSMT17_V2/{mask_train_v2,mask_test_v2}/  + list_query.txt list_gallery.txt

Each list line is ``relative/path pid``, paths relative to the train folder (train, val lists) or
the test folder (query, gallery lists). File names are ``PPPP_NNN_CC_...jpg`` with ``CC`` the
camera counted from 1. Statistics: 1,041 training identities with 30,248 (train) + 2,373 (val)
images, 11,659 query and 82,161 gallery images, 15 cameras.
"""

from __future__ import annotations

import os

from .. import register_dataset
from ..base import DatasetError, ReIDDataset, Sample
from .market1501 import find_layout

_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def _child_dir(parent: str, name: str) -> str:
    """``parent/name`` matched case-insensitively (copies exist with ``mask_train_V2``)."""
    for entry in sorted(os.listdir(parent)):
        if entry.lower() == name.lower() and os.path.isdir(os.path.join(parent, entry)):
            return os.path.join(parent, entry)
    raise DatasetError(f"msmt17: folder {os.path.join(parent, name)!r} is missing")


def _find_version(root: str | os.PathLike | None) -> tuple[str, str, str]:
    """Return ``(version_dir, train_dir, test_dir)`` for the first version found under ``root``."""
    subs = [v for v in _VERSIONS] + [os.path.join("msmt17", v) for v in _VERSIONS]
    folder = find_layout(root, subs, _LISTS, "msmt17")
    version = os.path.basename(os.path.normpath(folder))
    if version in _VERSIONS:
        train_name, test_name = _VERSIONS[version]
    else:  # root is the version folder under another name: detect by its content
        names = {e.lower() for e in os.listdir(folder)}
        train_name, test_name = _VERSIONS["MSMT17_V2" if "mask_train_v2" in names else "MSMT17_V1"]
    return folder, _child_dir(folder, train_name), _child_dir(folder, test_name)


def read_msmt_list(list_path: str, image_dir: str) -> list[Sample]:
    """Read one MSMT17 list file.

    Args:
        list_path: a ``list_*.txt`` file, one ``relative/path pid`` per line.
        image_dir: the folder the paths are relative to.

    Returns:
        Samples in file order; ``camid`` is the file name's third ``_`` field minus 1.

    Raises:
        DatasetError: a line is malformed (the message names the file and line number).
    """
    samples = []
    with open(list_path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                samples.append(_parse_line(line, list_path, lineno, image_dir))
    return samples


def _parse_line(line: str, list_path: str, lineno: int, image_dir: str) -> Sample:
    fields = line.split()
    where = f"msmt17: {list_path}:{lineno}"
    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise DatasetError(f"{where}: {line.strip()!r} is not 'relative/path pid'")
    parts = os.path.basename(fields[0]).split("_")
    if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        raise DatasetError(f"{where}: file name {fields[0]!r} is not 'PPPP_NNN_CC_...' (CC >= 1)")
    return Sample(os.path.join(image_dir, fields[0]), int(fields[1]), int(parts[2]) - 1)


@register_dataset("msmt17")
def msmt17(root: str | os.PathLike | None = None, combine_train_val: bool = True) -> ReIDDataset:
    """MSMT17, V1 or V2 layout (whichever is found first, V1 before V2).

    Args:
        root: a folder holding ``MSMT17_V1/`` or ``MSMT17_V2/`` (directly or under
            ``msmt17/``), or that version folder itself.
        combine_train_val: train on ``list_train`` + ``list_val`` (the paper's 32,621 training
            images; val holds further images of the same 1,041 identities). torchreid adds val
            only with its ``combineall`` option; set ``False`` for ``list_train`` alone.

    Returns:
        The dataset with 0-based camids.

    Raises:
        DatasetError: the version folder, image folders or list files are missing, or a list
            line is malformed.
    """
    folder, train_dir, test_dir = _find_version(root)
    lists = {name: os.path.join(folder, name) for name in _LISTS}
    train = read_msmt_list(lists["list_train.txt"], train_dir)
    if combine_train_val:
        train += read_msmt_list(lists["list_val.txt"], train_dir)
    query = read_msmt_list(lists["list_query.txt"], test_dir)
    gallery = read_msmt_list(lists["list_gallery.txt"], test_dir)
    return ReIDDataset(train, query, gallery, name="msmt17")
