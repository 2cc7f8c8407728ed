"""The full integrity check of an index folder: :meth:`GalleryIndex.verify`, ``reidkit index info --verify``.

Opening an index checks what it reads anyway (the faiss file; for ``flat`` the vectors it
rebuilds from). This reads everything, once: every committed vector row (checksum, finite,
unit length when the index is normalised), the faiss file (size, checksum) and the faiss index
loaded from it (dimension, training, vector count and ids against the manifest and SQLite), and
SQLite (``PRAGMA integrity_check``, generation, entry count, ids against ``next_id``). Each
problem is one clause naming its file; all of them raise one :class:`GalleryIndexError`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backends as fb
from .errors import GalleryIndexError
from .manifest import MANIFEST_NAME, IndexState
from .metadata import SQLITE_NAME, MetadataStore
from .store import VectorFile, file_crc32

_ROWS_PER_READ = 8192
_NORM_TOLERANCE = 1e-3  # |norm - 1| of a stored row of a normalised index (float32 gives ~1e-7)


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`GalleryIndex.verify` found in a sound index.

    Attributes:
        folder: the index folder.
        generation: the committed generation that was checked.
        checked: one line per check that passed.
        skipped: checks that could not run (no checksum recorded: an index written before
            reidkit recorded them).
        notes: harmless leftovers of a killed writer (rows past ``next_id``, stray faiss files),
            which the next write removes.
    """

    folder: Path
    generation: int
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": True, "generation": self.generation, "checked": self.checked,
                "skipped": self.skipped, "notes": self.notes}


def verify_index(folder: Path, state: IndexState, meta: MetadataStore, index, live_ids: np.ndarray) -> VerifyReport:
    """Check every file of ``folder`` against its committed ``state``.

    Args:
        folder: the index folder.
        state: the committed state the caller serves.
        meta: the open SQLite store of the folder.
        index: the faiss index loaded for ``state`` (None for an empty untrained one).
        live_ids: ``(count,) int64`` ids the caller serves at ``state``.

    Raises:
        GalleryIndexError: one line listing every problem, each naming its file.
    """
    report, problems = VerifyReport(folder, state.generation), []
    _check_vectors(folder, state, report, problems)
    _check_faiss_file(folder, state, report, problems)
    _check_faiss_index(state, index, live_ids, report, problems)
    _check_sqlite(folder, state, meta, live_ids, report, problems)
    if problems:
        raise GalleryIndexError(f"index {str(folder)!r} failed verification: " + "; ".join(problems))
    return report


def _check_vectors(folder: Path, state: IndexState, report: VerifyReport, problems: list[str]) -> None:
    vf = VectorFile(folder, state.dim)
    row, rows = 4 * state.dim, state.next_id
    if not vf.path.is_file():
        problems.append(f"{str(vf.path)!r} is missing")
        return
    size = vf.path.stat().st_size
    if size < rows * row:
        problems.append(f"{str(vf.path)!r} holds {size} bytes; {MANIFEST_NAME} commits {rows} rows of dim "
                        f"{state.dim} ({rows * row} bytes)")
        return
    if size > rows * row:
        report.notes.append(f"{vf.path.name}: {size - rows * row} bytes past the {rows} committed rows "
                            "(left by a killed writer; the next write drops them)")
    crc, bad = _scan_rows(vf.reader(rows), state.manifest.normalized)
    if bad:
        problems.append(f"{str(vf.path)!r}: {bad}")
    if state.vectors_crc32 is None:
        report.skipped.append(f"{vf.path.name}: no checksum recorded")
    elif crc != state.vectors_crc32:
        problems.append(f"{str(vf.path)!r} is corrupt: its {rows} committed rows have crc32 {crc:08x}, "
                        f"{MANIFEST_NAME} committed {state.vectors_crc32:08x}")
    if not bad and crc == state.vectors_crc32:
        report.checked.append(f"{vf.path.name}: {rows} rows of dim {state.dim}, crc32 {crc:08x}, finite"
                              + (", unit length" if state.manifest.normalized else ""))


def _scan_rows(vectors: np.ndarray, normalized: bool) -> tuple[int, str]:
    """``(crc32, first problem or "")`` of ``vectors (N, D) float32``, read once in blocks."""
    crc = 0
    for start in range(0, len(vectors), _ROWS_PER_READ):
        block = np.ascontiguousarray(vectors[start : start + _ROWS_PER_READ])  # (B, D)
        crc = zlib.crc32(block, crc)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            return crc, f"row {start + int(np.argmin(finite))} has NaN or infinite values"
        if normalized:
            norms = np.linalg.norm(block, axis=1)
            off = np.flatnonzero(np.abs(norms - 1) > _NORM_TOLERANCE)
            if len(off):
                i = int(off[0])
                return crc, f"row {start + i} has norm {norms[i]:.4f}; the index stores unit-length vectors"
    return crc, ""


def _check_faiss_file(folder: Path, state: IndexState, report: VerifyReport, problems: list[str]) -> None:
    stray = sorted(p.name for p in folder.glob("faiss-*.index") if p.name != state.faiss_file)
    if stray:
        report.notes.append(f"faiss files of no committed generation: {', '.join(stray)} (the next write removes them)")
    if state.faiss_file is None:
        return
    path = folder / state.faiss_file
    if not path.is_file():
        problems.append(f"{str(path)!r} is missing")
        return
    size = path.stat().st_size
    if size != state.faiss_bytes:
        problems.append(f"{str(path)!r} holds {size} bytes, {MANIFEST_NAME} committed {state.faiss_bytes}")
        return
    if state.faiss_crc32 is None:
        report.skipped.append(f"{path.name}: no checksum recorded")
        return
    try:
        crc = file_crc32(path)
    except OSError as err:  # removed by a writer that committed meanwhile
        problems.append(f"{str(path)!r} cannot be read ({err.strerror})")
        return
    if crc != state.faiss_crc32:
        problems.append(f"{str(path)!r} is corrupt: its crc32 is {crc:08x}, {MANIFEST_NAME} committed {state.faiss_crc32:08x}")
    else:
        report.checked.append(f"{path.name}: {size} bytes, crc32 {crc:08x}")


def _check_faiss_index(state: IndexState, index, live_ids: np.ndarray, report: VerifyReport, problems: list[str]) -> None:
    what = state.faiss_file or f"the {state.kind} index built from the vectors"
    if index is None:
        if state.count:
            problems.append(f"{MANIFEST_NAME} commits {state.count} entries but no faiss index")
        return
    found = []
    if index.d != state.dim:
        found.append(f"{what} holds {index.d}-d vectors, {MANIFEST_NAME} says dim {state.dim}")
    if bool(index.is_trained) != state.trained:
        found.append(f"{what} is {'' if index.is_trained else 'not '}trained, {MANIFEST_NAME} says trained={state.trained}")
    stored = fb.stored_ids(index)
    if len(stored) != index.ntotal or len(np.unique(stored)) != len(stored):
        found.append(f"{what} holds duplicate ids or an id table of the wrong length")
    missing = np.setdiff1d(live_ids, stored)
    extra = np.setdiff1d(stored, live_ids)
    if len(missing):
        found.append(f"{what} lacks {len(missing)} live id(s) of {SQLITE_NAME} (first {int(missing[0])})")
    if len(extra) and (state.kind != "hnsw" or extra.max() >= state.next_id or extra.min() < 0):
        found.append(f"{what} holds {len(extra)} id(s) that are not live entries (first {int(extra[0])})")
    problems.extend(found)
    if not found:
        report.checked.append(f"{what}: dim {index.d}, {index.ntotal} vectors, ids match the {len(live_ids)} live entries")


def _check_sqlite(folder: Path, state: IndexState, meta: MetadataStore, live_ids: np.ndarray,
                  report: VerifyReport, problems: list[str]) -> None:
    path, found = folder / SQLITE_NAME, []
    sqlite_problems = meta.integrity_problems()
    if sqlite_problems:
        problems.append(f"{str(path)!r} fails PRAGMA integrity_check: {'; '.join(sqlite_problems[:3])}")
        return
    if meta.generation() > state.generation:
        report.notes.append(f"{SQLITE_NAME} holds writes of generation {meta.generation()} that {MANIFEST_NAME} "
                            "never committed (left by a killed writer; invisible, the next write undoes them)")
    if meta.generation() < state.generation:
        found.append(f"{str(path)!r} is at generation {meta.generation()}, {MANIFEST_NAME} at {state.generation}")
    ids, _ = meta.live(state.generation)
    if len(ids) != state.count or not np.array_equal(ids, live_ids):
        found.append(f"{str(path)!r} holds {len(ids)} live entries, {MANIFEST_NAME} commits {state.count}")
    if meta.max_id() >= state.next_id and meta.generation() == state.generation:
        found.append(f"{str(path)!r} holds id {meta.max_id()}, at or past next_id {state.next_id}")
    problems.extend(found)
    if not found:
        report.checked.append(f"{SQLITE_NAME}: integrity_check ok, {len(ids)} live entries at generation {state.generation}")
