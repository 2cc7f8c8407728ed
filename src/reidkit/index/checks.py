"""Input checks of the gallery index: each failure is a GalleryIndexError naming the value at fault."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from .errors import GalleryIndexError
from .metadata import EntryMeta


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def show(values: list) -> str:
    """The first ten values, comma-separated, and how many there are in all."""
    head = ", ".join(str(v) for v in values[:10])
    return head + (f" ... ({len(values)} in all)" if len(values) > 10 else "")


def check_rows(x, dim: int, normalize: bool, what: str, where: str) -> np.ndarray:
    """``x`` (numpy or torch) as a new ``(N, D)`` contiguous float32 array, finite, L2-normalised if asked.

    Args:
        x: the embeddings.
        dim: the D the index holds.
        normalize: divide each row by its L2 norm.
        what: how the array is named in messages (``"features"``, ``"queries"``).
        where: the index, as messages name it (folder and model).

    Raises:
        GalleryIndexError: not numeric, not 2-D, no rows, another dimension, NaN/inf, zero rows.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        x = np.array(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise GalleryIndexError(f"{what} must be a numeric (N, D) array: {err}") from None
    if x.ndim != 2:
        raise GalleryIndexError(f"{what} must be a (N, D) array; got shape {x.shape}")
    if len(x) == 0:
        raise GalleryIndexError(f"{what} is empty (0 rows); expected at least one row of dimension {dim}")
    if x.shape[1] != dim:
        raise GalleryIndexError(f"{what} have dimension {x.shape[1]}; {where} holds {dim}-d embeddings")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise GalleryIndexError(f"{what} row {bad[0]} has NaN or infinite values ({len(bad)} such rows)")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise GalleryIndexError(f"{what} row {zero[0]} is a zero vector; it cannot be L2-normalised")
        x /= norms
    return np.ascontiguousarray(x)


def check_ids(ids) -> np.ndarray:
    """``ids`` as a non-empty ``(N,)`` int64 array."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise GalleryIndexError(f"ids must be a 1-D sequence of integers, got {show(np.ravel(arr).tolist())}")
    if arr.size == 0:
        raise GalleryIndexError("no ids given")
    return arr.astype(np.int64)


def unknown_ids(ids: np.ndarray, live_ids: np.ndarray) -> np.ndarray:
    """The values of ``ids`` missing from the sorted ``live_ids``."""
    if len(live_ids) == 0:
        return ids
    pos = np.minimum(np.searchsorted(live_ids, ids), len(live_ids) - 1)
    return ids[live_ids[pos] != ids]


def check_camids(values, name: str) -> Collection[int] | None:
    """A camera filter (one camid or a collection of them) as a tuple of ints, or None."""
    if values is None:
        return None
    values = [values] if is_int(values) else values
    if isinstance(values, (str, bytes)) or not all(is_int(v) for v in values):
        raise GalleryIndexError(f"{name} must be a camid or a collection of integer camids, got {values!r}")
    return tuple(int(v) for v in values)


def check_entries(entries, n: int) -> list[EntryMeta]:
    """``entries`` as N :class:`EntryMeta` (dicts of its fields are converted)."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        raise GalleryIndexError(f"entries must be a list of EntryMeta, got {type(entries).__name__}")
    if len(entries) != n:
        raise GalleryIndexError(f"{len(entries)} entries given for {n} feature rows")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            try:
                entry = EntryMeta(**entry)
            except TypeError as err:
                raise GalleryIndexError(f"entries[{i}]: {err}") from None
        if not isinstance(entry, EntryMeta):
            raise GalleryIndexError(f"entries[{i}] must be an EntryMeta or a dict, got {type(entry).__name__}")
        out.append(entry)
    return out
