"""CUHK03 (Li et al., "DeepReID", CVPR 2014) with the new 767/700 protocol (Zhong et al.,
"Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017).

Layout (torchreid's)::

    cuhk03_release/cuhk-03.mat                      MATLAB v7.3 (HDF5), images inside
    cuhk03_new_protocol_config_detected.mat         MATLAB v5 split files
    cuhk03_new_protocol_config_labeled.mat
    images_detected/  images_labeled/               PNGs extracted from cuhk-03.mat

``cuhk-03.mat`` holds cell arrays ``detected`` and ``labeled``: one cell per camera pair (5), each
a ``(num_persons, 10)`` cell array of images (H, W, 3) uint8; columns 1-5 come from the pair's
first camera, 6-10 from its second; empty cells are missing images. The images are written once
to ``images_{variant}/{pair}_{person:03d}_{view}_{column:02d}.png`` (all 1-based; torchreid's
names), which are the names listed in the split file's ``filelist``. When those files already
exist, ``cuhk-03.mat`` is not needed.

Split file keys: ``filelist`` (image names), ``labels`` (pid per image), ``train_idx``,
``query_idx``, ``gallery_idx`` (1-based rows of ``filelist``). 767 train identities (7,365
detected / 7,368 labeled images), 700 test identities with 1,400 query and 5,332 detected /
5,328 labeled gallery images. camid is the ``view`` field of the name minus 1 (0 or 1), as in
torchreid.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile

import numpy as np
from PIL import Image

from .. import register_dataset
from ..base import DatasetError, ReIDDataset, Sample
from .market1501 import find_layout

VARIANTS = ("detected", "labeled")
_SPLIT_KEYS = ("filelist", "labels", "train_idx", "query_idx", "gallery_idx")
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- split file
def _import(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"cuhk03: {purpose} needs the '{module.split('.')[0]}' package; install it with "
            "pip install 'reidkit[mat]'"
        ) from None


def _mat_str(value, where: str) -> str:
    """Unwrap a MATLAB cell holding one char array into ``str``."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise DatasetError(f"{where}: expected one file name per cell, got {value!r}")
        value = value.item()
    return str(value)


def _indices(mat: dict, key: str, size: int, path: str) -> np.ndarray:
    idx = np.asarray(mat[key]).ravel().astype(np.int64)
    bad = idx[(idx < 1) | (idx > size)]
    if bad.size:
        raise DatasetError(
            f"cuhk03: {path}: {key} holds {int(bad[0])}; expected 1-based rows 1..{size}"
        )
    return idx - 1


def read_protocol(path: str) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Read a ``cuhk03_new_protocol_config_*.mat`` split file (MATLAB v5).

    Returns:
        ``(filelist, labels, index)``: file names, pids ``(N,) int64`` and ``index[split]`` the
        0-based rows of ``split`` in ``train``/``query``/``gallery``.

    Raises:
        ImportError: scipy is not installed.
        DatasetError: the file is unreadable, a key is missing, lengths differ or an index is
            out of range.
    """
    scipy_io = _import("scipy.io", "reading the split file")
    try:
        mat = scipy_io.loadmat(path)
    except (OSError, ValueError, NotImplementedError) as err:
        raise DatasetError(f"cuhk03: cannot read {path} as a MATLAB v5 file: {err}") from None
    missing = [k for k in _SPLIT_KEYS if k not in mat]
    if missing:
        raise DatasetError(f"cuhk03: {path} lacks key(s) {missing}; expected {list(_SPLIT_KEYS)}")
    names = [_mat_str(v, f"cuhk03: {path}: filelist") for v in np.asarray(mat["filelist"]).ravel()]
    labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
    if len(labels) != len(names):
        raise DatasetError(f"cuhk03: {path}: {len(labels)} labels for {len(names)} filelist names")
    index = {s: _indices(mat, f"{s}_idx", len(names), path) for s in ("train", "query", "gallery")}
    return names, labels, index


# ---------------------------------------------------------------------------- image extraction
def image_name(pair: int, person: int, column: int) -> str:
    """torchreid's file name of one ``cuhk-03.mat`` image; all arguments 1-based."""
    view = 1 if column <= 5 else 2
    return f"{pair}_{person:03d}_{view}_{column:02d}.png"


def _save_png_atomic(img: np.ndarray, path: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(img).save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _open_hdf5(mat_path: str):
    h5py = _import("h5py", "reading cuhk-03.mat (MATLAB v7.3 = HDF5)")
    try:
        return h5py.File(mat_path, "r")
    except OSError as err:
        raise DatasetError(f"cuhk03: cannot open {mat_path} as MATLAB v7.3 (HDF5): {err}") from None


def extract_images(mat_path: str, variant: str, out_dir: str) -> int:
    """Write the ``variant`` images of ``cuhk-03.mat`` as PNGs into ``out_dir``.

    Files that exist are kept (each is written under a temporary name and renamed, so an
    existing file is complete).

    Returns:
        The number of files written.

    Raises:
        ImportError: h5py is not installed.
        DatasetError: the file is not HDF5, lacks ``variant`` or holds a non-image cell.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    with _open_hdf5(mat_path) as mat:
        if variant not in mat:
            raise DatasetError(f"cuhk03: {mat_path} has no '{variant}' cell array")
        for pair, pair_ref in enumerate(np.asarray(mat[variant]).ravel(), start=1):
            cells = mat[pair_ref][()].T  # (num_persons, 10) object references
            for person, row in enumerate(cells, start=1):
                for column, ref in enumerate(row, start=1):
                    path = os.path.join(out_dir, image_name(pair, person, column))
                    written += _extract_one(mat, ref, path)
    return written


def _extract_one(mat, ref, path: str) -> int:
    img = mat[ref][()].T  # MATLAB is column-major: (3, W, H) on disk -> (H, W, 3)
    if img.ndim < 3 or img.size == 0:
        return 0  # empty cell: a missing image
    if img.dtype != np.uint8 or img.shape[2] != 3:
        raise DatasetError(f"cuhk03: image for {os.path.basename(path)} is {img.dtype} "
                           f"{img.shape}; expected (H, W, 3) uint8")
    if os.path.exists(path):
        return 0
    _save_png_atomic(np.ascontiguousarray(img), path)
    return 1


# ---------------------------------------------------------------------------- builder
def _camid(name: str, where: str) -> int:
    parts = name.split("_")
    if len(parts) != 4 or parts[2] not in ("1", "2"):
        raise DatasetError(f"{where}: filelist name {name!r} is not 'pair_person_view_column.png'")
    return int(parts[2]) - 1


def _ensure_images(folder: str, variant: str, names: list[str]) -> str:
    img_dir = os.path.join(folder, f"images_{variant}")
    if all(os.path.isfile(os.path.join(img_dir, n)) for n in names):
        return img_dir
    mat_path = os.path.join(folder, "cuhk03_release", "cuhk-03.mat")
    if not os.path.isfile(mat_path):
        raise DatasetError(f"cuhk03: {img_dir!r} lacks images of the split file and {mat_path!r} "
                           "(to extract them from) is missing")
    _log.info("cuhk03: extracting %s images from %s into %s", variant, mat_path, img_dir)
    extract_images(mat_path, variant, img_dir)
    missing = [n for n in names if not os.path.isfile(os.path.join(img_dir, n))]
    if missing:
        raise DatasetError(f"cuhk03: {len(missing)} filelist image(s) are not in {mat_path}, "
                           f"e.g. {missing[0]!r}")
    return img_dir


@register_dataset("cuhk03")
def cuhk03(root: str | os.PathLike | None = None, variant: str = "detected") -> ReIDDataset:
    """CUHK03, new protocol (767 train / 700 test identities).

    Args:
        root: a folder holding the split files (directly or under ``cuhk03/``), with either
            ``cuhk03_release/cuhk-03.mat`` or already extracted ``images_{variant}/``.
        variant: ``"detected"`` (detector boxes) or ``"labeled"`` (hand-drawn boxes).

    Returns:
        The dataset; query / gallery keep the split file's pids, camids are 0 or 1.

    Raises:
        ImportError: scipy, or h5py when images must be extracted, is missing.
        DatasetError: a file is missing or malformed, or ``variant`` is unknown.
    """
    if variant not in VARIANTS:
        raise DatasetError(f"cuhk03: variant={variant!r}; expected one of {VARIANTS}")
    split_name = f"cuhk03_new_protocol_config_{variant}.mat"
    folder = find_layout(root, ("cuhk03",), (split_name,), "cuhk03")
    split_path = os.path.join(folder, split_name)
    names, labels, index = read_protocol(split_path)
    img_dir = _ensure_images(folder, variant, names)
    lists = {
        split: [Sample(os.path.join(img_dir, names[i]), int(labels[i]),
                       _camid(names[i], split_path)) for i in rows]
        for split, rows in index.items()
    }
    return ReIDDataset(lists["train"], lists["query"], lists["gallery"], name=f"cuhk03-{variant}")
