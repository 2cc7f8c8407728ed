"""Custom data: a folder of images named by identity and camera (``folder``), or a CSV manifest
(``csv``).

``folder`` modes (option ``mode``):

* ``"splits"``: ``root/{train,query,gallery}/``; ``train/`` may be missing or empty (evaluation
  only), ``query/`` and ``gallery/`` must hold images.
* ``"single"``: ``root`` is one folder of images. Identities are split into train and test with a
  seeded ratio; for each test identity and each of its cameras, one randomly chosen image goes to
  the query and the rest to the gallery. Junk images (pid -1) go to the gallery.
* ``"train"``: every image is a training image; query and gallery are empty (the run evaluates on
  another dataset).
* ``"auto"`` (default): ``"splits"`` if ``root`` has a ``query/`` or ``gallery/`` folder,
  ``"single"`` otherwise.

Images are found recursively (``.jpg .jpeg .png .bmp .webp``, any case); pid and camid come from
the file *name* through a regular expression with named groups ``pid`` and ``camid`` (default:
Market-1501 names, ``0002_c1s1_000451_03.jpg``).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections import defaultdict
from functools import partial

import numpy as np

from .. import register_dataset
from ..base import DatasetError, ReIDDataset, Sample

MARKET_PATTERN = r"^(?P<pid>-?\d+)_c(?P<camid>\d+)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MODES = ("auto", "splits", "single", "train")


# ---------------------------------------------------------------------------- folder parsing
def find_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, extension case-insensitive), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in filenames
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def compile_pattern(pattern: str) -> re.Pattern:
    """Compile a file-name pattern and check it has the groups ``pid`` and ``camid``.

    Raises:
        DatasetError: the pattern is not a valid regular expression or lacks a group.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DatasetError(
            f"folder: pattern {pattern!r} is not a regular expression: {err}"
        ) from None
    missing = {"pid", "camid"} - set(regex.groupindex)
    if missing:
        raise DatasetError(f"folder: pattern {pattern!r} lacks named group(s) {sorted(missing)}")
    return regex


def parse_names(paths: list[str], regex: re.Pattern, camid_base: int,
                ignore_unmatched: bool) -> list[Sample]:
    """Samples from file names (``regex.search`` on the base name).

    Raises:
        DatasetError: a name does not match (unless ``ignore_unmatched``, which warns once) or
            its camid is below ``camid_base``.
    """
    samples, unmatched = [], []
    for path in paths:
        match = regex.search(os.path.basename(path))
        if match is None:
            if not ignore_unmatched:
                raise DatasetError(
                    f"folder: file name {path!r} does not match pattern {regex.pattern!r} "
                    "(set pattern=..., or ignore_unmatched=True to skip such files)"
                )
            unmatched.append(path)
            continue
        samples.append(_sample(path, match, camid_base))
    if unmatched:
        warnings.warn(
            f"folder: skipped {len(unmatched)} file(s) not matching {regex.pattern!r}, "
            f"e.g. {unmatched[0]!r}",
            stacklevel=3,
        )
    return samples


def _sample(path: str, match: re.Match, camid_base: int) -> Sample:
    try:
        pid, camid = int(match["pid"]), int(match["camid"]) - camid_base
    except (TypeError, ValueError):
        raise DatasetError(f"folder: {path!r}: pid {match['pid']!r} / camid {match['camid']!r} "
                           "are not integers") from None
    if camid < 0:
        raise DatasetError(f"folder: {path!r}: camid {match['camid']} < camid_base={camid_base}")
    return Sample(path, pid, camid)


# ---------------------------------------------------------------------------- modes
def _read_split(root: str, split: str, parse, required: bool) -> list[Sample]:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        if required:
            raise DatasetError(f"folder: {folder!r} is missing; mode='splits' needs {split}/")
        return []
    samples = parse(find_images(folder))
    if required and not samples:
        raise DatasetError(f"folder: {folder!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def _load_splits(root: str, parse) -> ReIDDataset:
    train = _read_split(root, "train", parse, required=False)
    query = _read_split(root, "query", parse, required=True)
    gallery = _read_split(root, "gallery", parse, required=True)
    return ReIDDataset(train, query, gallery, name="folder")


def split_single(samples: list[Sample], test_ratio: float, seed: int
                 ) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split one pool of samples into ``(train, query, gallery)``.

    ``n_test = max(1, round(test_ratio * n_ids))`` identities, the first of
    ``numpy.random.default_rng(seed).permutation(sorted_pids)``, are test identities. For each
    test identity and camera (in sorted order), the same generator picks one image (among that
    group's images sorted by path) for the query; the others go to the gallery. Junk (pid -1)
    goes to the gallery.

    Raises:
        DatasetError: ``test_ratio`` is not in ``(0, 1]`` or there is no identity.
    """
    if not 0 < test_ratio <= 1:
        raise DatasetError(f"folder: test_ratio={test_ratio!r}; expected a number in (0, 1]")
    pids = sorted({s.pid for s in samples if s.pid != -1})
    if not pids:
        raise DatasetError("folder: mode='single' found no identity to split")
    rng = np.random.default_rng(seed)
    n_test = max(1, round(test_ratio * len(pids)))
    test_ids = {int(p) for p in rng.permutation(np.array(pids, dtype=np.int64))[:n_test]}
    groups = defaultdict(list)
    for s in sorted(samples):
        if s.pid in test_ids:
            groups[(s.pid, s.camid)].append(s)
    query, gallery = [], [s for s in samples if s.pid == -1]
    for key in sorted(groups):
        pick = int(rng.integers(len(groups[key])))
        query.append(groups[key][pick])
        gallery += [s for i, s in enumerate(groups[key]) if i != pick]
    train = [s for s in samples if s.pid != -1 and s.pid not in test_ids]
    return train, query, sorted(gallery)


def _pool(root: str, parse) -> list[Sample]:
    samples = parse(find_images(root))
    if not samples:
        raise DatasetError(f"folder: {root!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


@register_dataset("folder")
def folder(
    root: str | os.PathLike | None = None,
    mode: str = "auto",
    pattern: str = MARKET_PATTERN,
    camid_base: int = 1,
    ignore_unmatched: bool = False,
    test_ratio: float = 0.5,
    seed: int = 0,
) -> ReIDDataset:
    """A folder of images whose names hold pid and camera (see the module docstring for modes).

    Args:
        root: the folder.
        mode: ``"auto"``, ``"splits"``, ``"single"`` or ``"train"``.
        pattern: regular expression searched in each file's base name, with named groups
            ``pid`` (may be ``-1`` = junk) and ``camid``.
        camid_base: the number of the first camera in the names (subtracted: camids are 0-based).
        ignore_unmatched: skip (with one warning) files the pattern does not match instead of
            raising.
        test_ratio: ``"single"`` mode: fraction of identities held out for testing, in (0, 1].
        seed: ``"single"`` mode: seed of the identity split and the query picks.

    Raises:
        DatasetError: missing root or split folder, empty query or gallery, a name the pattern
            does not match, or a bad option value.
    """
    if root is None or not os.path.isdir(root):
        raise DatasetError(f"folder: root {root!r} is not a directory")
    if mode not in _MODES:
        raise DatasetError(f"folder: mode={mode!r}; expected one of {_MODES}")
    root = os.fspath(root)
    regex = compile_pattern(pattern)
    parse = partial(parse_names, regex=regex, camid_base=camid_base,
                    ignore_unmatched=ignore_unmatched)
    if mode == "auto":
        has_eval = any(os.path.isdir(os.path.join(root, d)) for d in ("query", "gallery"))
        mode = "splits" if has_eval else "single"
    if mode == "splits":
        return _load_splits(root, parse)
    samples = _pool(root, parse)
    if mode == "train":
        return ReIDDataset(samples, [], [], name="folder", allow_empty_eval=True)
    return ReIDDataset(*split_single(samples, test_ratio, seed), name="folder")


# ---------------------------------------------------------------------------- csv manifest
_CSV_REQUIRED = ("path", "pid", "camid")
_CSV_SPLITS = ("train", "query", "gallery")


def _csv_row(row: dict, manifest: str, lineno: int, base_dir: str, camid_base: int
             ) -> tuple[str, Sample]:
    where = f"csv: {manifest}:{lineno}"
    if not (row.get("path") or "").strip():
        raise DatasetError(f"{where}: the path is empty")
    try:
        pid, camid = int(row["pid"]), int(row["camid"]) - camid_base
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: pid {row['pid']!r} and camid {row['camid']!r} must be "
                           "integers") from None
    if camid < 0:
        raise DatasetError(f"{where}: camid {row['camid']} < camid_base={camid_base}")
    split = (row.get("split") or "train").strip().lower()
    if split not in _CSV_SPLITS:
        raise DatasetError(f"{where}: split {row['split']!r}; expected one of {_CSV_SPLITS}")
    path = os.path.join(base_dir, row["path"].strip())  # absolute paths stay absolute
    return split, Sample(path, pid, camid)


def read_manifest(manifest: str, camid_base: int = 0) -> dict[str, list[Sample]]:
    """Read a CSV manifest into ``{"train": [...], "query": [...], "gallery": [...]}``.

    Raises:
        DatasetError: the header lacks a column or has an unknown one, or a row is malformed
            (the message names the file and line number).
    """
    out = {split: [] for split in _CSV_SPLITS}
    base_dir = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in _CSV_REQUIRED if c not in header]
        unknown = [c for c in header if c not in _CSV_REQUIRED + ("split",)]
        if missing or unknown:
            raise DatasetError(
                f"csv: {manifest}:1: header {header}; expected path,pid,camid[,split]"
            )
        reader.fieldnames = header
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(
                    f"csv: {manifest}:{reader.line_num}: expected {len(header)} fields"
                )
            split, sample = _csv_row(row, manifest, reader.line_num, base_dir, camid_base)
            out[split].append(sample)
    return out


@register_dataset("csv")
def csv_manifest(root: str | os.PathLike | None = None, path: str | os.PathLike | None = None,
        camid_base: int = 0) -> ReIDDataset:
    """A dataset listed in a CSV manifest with header ``path,pid,camid[,split]``.

    Relative paths are resolved against the manifest's folder; ``split`` is ``train``, ``query``
    or ``gallery`` (without the column every row is a training row). A manifest without query
    and gallery rows is a training-only dataset.

    Args:
        root: the manifest file (used when ``path`` is not given).
        path: the manifest file.
        camid_base: the number of the first camera in the manifest (0: camids as written).

    Raises:
        DatasetError: the manifest is missing or malformed, or only one of query / gallery has
            rows.
    """
    manifest = path if path is not None else root
    if manifest is None or not os.path.isfile(manifest):
        raise DatasetError(f"csv: manifest {manifest!r} is not a file (give path= or root=)")
    splits = read_manifest(os.fspath(manifest), camid_base)
    if bool(splits["query"]) != bool(splits["gallery"]):
        empty = "query" if not splits["query"] else "gallery"
        raise DatasetError(
            f"csv: {manifest}: no {empty} row, but the other evaluation split has rows"
        )
    train_only = not splits["query"]
    return ReIDDataset(splits["train"], splits["query"], splits["gallery"], name="csv",
                       allow_empty_eval=train_only)
