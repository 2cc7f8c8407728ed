"""Files of an index folder: atomic replacement, the writer lock, the vectors file, creation.

All of it is plain POSIX: ``os.replace`` for atomic renames, ``fsync`` of files and of the folder
so a committed rename survives a crash, ``fcntl.flock`` for the writer lock (released by the
kernel when the holder dies, so a ``kill -9`` never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .checks import show
from .errors import GalleryIndexError, IndexLockedError
from .manifest import MANIFEST_NAME, VECTORS_NAME, IndexState
from .metadata import SQLITE_NAME, MetadataStore

LOCK_NAME = "writer.lock"
TMP_SUFFIX = ".tmp"
_CRC_BLOCK = 1 << 24  # bytes read per zlib.crc32 call


def file_crc32(path: Path, start: int = 0, length: int | None = None, crc: int = 0) -> int:
    """CRC-32 (``zlib.crc32``) of ``length`` bytes of ``path`` from byte ``start`` (default: to
    the end), continuing ``crc``: ``file_crc32(p, 0, a + b) == file_crc32(p, a, b, file_crc32(p, 0, a))``.

    Raises:
        GalleryIndexError: the file ends before ``start + length`` bytes.
    """
    left = float("inf") if length is None else length
    with path.open("rb") as handle:
        handle.seek(start)
        while left > 0:
            block = handle.read(int(min(left, _CRC_BLOCK)))
            if not block:
                if length is None:
                    break
                raise GalleryIndexError(f"{str(path)!r} ends before byte {start + length}")
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


def corrupt_file_error(path: Path, got: int, expected: int) -> GalleryIndexError:
    """The one-line error of a file whose CRC-32 differs from the committed one."""
    return GalleryIndexError(
        f"index file {str(path)!r} is corrupt: crc32 {got:08x}, {MANIFEST_NAME} committed {expected:08x} (the file "
        "or the manifest changed after the commit; restore the folder from a copy or build the index again)"
    )


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, fill: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``fill(tmp)`` writes a temporary file that is fsynced and renamed.

    The temporary file is ``.<name>.tmp`` in the same folder; it is removed on any exception, and
    one left by a killed process is removed by :func:`remove_temporaries`. The folder is fsynced
    after the rename so the new name is durable.
    """
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        fill(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def write_text_atomically(path: Path, text: str) -> None:
    """:func:`replace_atomically` with UTF-8 text."""
    replace_atomically(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))


def remove_temporaries(folder: Path) -> None:
    """Remove ``.<name>.tmp`` files a killed writer left in ``folder``."""
    for entry in folder.glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            entry.unlink()


class WriterLock:
    """Exclusive writer lock on ``folder/writer.lock`` (``fcntl.flock``), reentrant per object.

    Args:
        folder: the index folder.
        timeout: seconds to wait for another writer before giving up; 0 fails at once.

    Raises:
        IndexLockedError: (on :meth:`acquire`) another process holds the lock past ``timeout``;
            the message names the folder and the holder's pid.
    """

    def __init__(self, folder: Path, timeout: float):
        self.path = folder / LOCK_NAME
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        if self._depth == 0:
            self._fd = self._lock()
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def _lock(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise IndexLockedError(
                        f"index {str(self.path.parent)!r} is being written by another process{holder}; "
                        f"gave up after {self.timeout:g} s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd


def _read_holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f" (pid {pid})" if pid else ""


class VectorFile:
    """Append-only float32 matrix ``(rows, D)`` of the raw vectors; row ``i`` belongs to id ``i``.

    Rows beyond the committed ``next_id`` of the manifest are leftovers of a killed writer; they
    are never read and the next writer truncates them. Rows of removed entries stay in the file
    (ids are never reused), so its size is ``next_id * D * 4`` bytes.
    """

    def __init__(self, folder: Path, dim: int):
        self.path = folder / VECTORS_NAME
        self.dim = dim

    def create(self) -> None:
        self.path.touch(exist_ok=False)

    def rows_on_disk(self) -> int:
        return self.path.stat().st_size // (4 * self.dim)

    def reader(self, rows: int) -> np.ndarray:
        """Read-only memory map of the first ``rows`` rows: ``(rows, D)`` float32.

        Raises:
            GalleryIndexError: the file is missing or shorter than ``rows`` rows.
        """
        if not self.path.is_file():
            raise GalleryIndexError(f"index {str(self.path.parent)!r} has no {self.path.name}")
        if self.rows_on_disk() < rows:
            raise GalleryIndexError(
                f"{str(self.path)!r} holds {self.rows_on_disk()} vectors; the manifest commits {rows}"
            )
        if rows == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(self.path, np.float32, "r", shape=(rows, self.dim))

    def crc32(self, start: int, stop: int, crc: int = 0) -> int:
        """CRC-32 of rows ``start .. stop - 1`` continuing ``crc`` (see :func:`file_crc32`)."""
        row = 4 * self.dim
        return file_crc32(self.path, start * row, (stop - start) * row, crc)

    def check_crc32(self, start: int, stop: int, crc: int, expected: int | None) -> None:
        """Raise the corrupt-file error unless rows ``start .. stop - 1`` continue ``crc`` to
        ``expected`` (nothing is checked when ``expected`` is None: no checksum recorded)."""
        if expected is None:
            return
        got = self.crc32(start, stop, crc)
        if got != expected:
            raise corrupt_file_error(self.path, got, expected)

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows (N, D)`` float32 at row ``start``, dropping anything after it; flushed, not synced."""
        with self.path.open("r+b") as handle:
            handle.truncate(start * self.dim * 4)
            handle.seek(start * self.dim * 4)
            np.ascontiguousarray(rows, np.float32).tofile(handle)

    def truncate(self, rows: int) -> None:
        """Drop rows beyond ``rows`` (leftovers of a killed writer)."""
        if self.rows_on_disk() * 4 * self.dim != self.path.stat().st_size or self.rows_on_disk() > rows:
            os.truncate(self.path, rows * self.dim * 4)

    def sync(self) -> None:
        fsync_path(self.path)


def read_state(folder: Path) -> IndexState:
    """The committed state, with a clear error for a missing or foreign folder."""
    if not folder.exists():
        raise GalleryIndexError(f"index folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise GalleryIndexError(f"index path {str(folder)!r} is not a folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        names = sorted(p.name for p in folder.iterdir())
        held = f"it holds {show(names)}" if names else "it is empty"
        raise GalleryIndexError(f"{str(folder)!r} is not a reidkit gallery index (no {MANIFEST_NAME}; {held})")
    return IndexState.from_file(path)


def check_new_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise GalleryIndexError(f"cannot create index {str(folder)!r}: it exists and is not an empty folder")


def build_folder(folder: Path, state: IndexState) -> None:
    """Write a new index into a temporary sibling folder, then rename it into place."""
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{folder.name}.creating-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed create()
    tmp = parent / f".{folder.name}.creating-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        VectorFile(tmp, state.dim).create()
        MetadataStore(tmp / SQLITE_NAME, create=True).close()
        write_text_atomically(tmp / MANIFEST_NAME, state.to_json())
        os.replace(tmp, folder)
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
