"""Safe file output: atomic writes, writability checks and stale temporary files.

Every file reidkit writes for the user (checkpoints, configs, logs, results, features, pictures)
goes through :func:`atomic_write`: the content is written to a temporary file in the target's
folder, flushed and fsynced, then renamed over the target with :func:`os.replace`, so a crash, a
kill or a full disk leaves either the old file or the new one, never a half-written one. The
temporary file is removed on any exception; one left by a ``kill -9`` is named
``.<target name>.<random>.tmp`` and removed by :func:`clean_stale_temporaries` when the next run
starts in that folder.

Python's ``tempfile`` and ``os.replace`` do the work; this module only fixes the naming and the
error messages (one line naming the path) that the command line prints.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


class OutputError(OSError):
    """A file or folder cannot be written (read-only, full disk, not a folder); names the path."""


def _describe(err: OSError) -> str:
    return err.strerror or type(err).__name__


def ensure_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check a file can be created in it.

    Args:
        folder: the folder.
        what: how the folder is named in the error message (e.g. ``"--output"``).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the folder cannot be created, is not a folder, or is not writable
            (read-only file system, no permission, no space).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{what} {str(folder)!r} exists and is not a folder") from None
    except OSError as err:
        raise OutputError(f"{what} {str(folder)!r} cannot be created: {_describe(err)}") from None
    if not folder.is_dir():
        raise OutputError(f"{what} {str(folder)!r} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"0")
            probe.flush()
    except OSError as err:
        raise OutputError(f"{what} {str(folder)!r} is not writable: {_describe(err)}") from None
    return folder


def ensure_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check before any work that ``path`` can be written (its folder is created if needed).

    Raises:
        OutputError: ``path`` is a folder, or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a folder; expected a file path")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), f"folder of {what} {str(path)!r}")
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary file, which replaces ``path``.

    Args:
        path: the target file; its folder is created if needed.
        write: called with a binary file handle open for writing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the folder cannot be written or the disk is full; the old file, if any, is
            unchanged and no temporary file is left behind.
        Exception: whatever ``write`` raises, after the same clean-up.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {str(path)!r}: {_describe(err)}") from None
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; the result gets what a plain open() would give
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {str(path)!r}: {_describe(err)}") from None
        raise
    return path


def _mode_for(path: Path) -> int:
    """The permission bits of the file being replaced, else ``0o666`` less the process umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` must set
    it to read it, which a thread creating a file at that moment would see)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened / fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporary files that :func:`atomic_write` left in ``folder`` when it was killed.

    Only names of the form ``.<name>.<random>.tmp`` directly in ``folder`` are removed.

    Returns:
        The removed paths.
    """
    removed = []
    for tmp in _stale_temporaries(Path(folder)):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _stale_temporaries(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
            yield entry


PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def picture_format(path: str | Path, what: str = "--output") -> str:
    """The Pillow format name for a picture path's extension.

    Raises:
        OutputError: the extension is not one of :data:`PICTURE_FORMATS`.
    """
    fmt = PICTURE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"{what} {str(path)!r}: unknown picture extension; use one of {', '.join(PICTURE_FORMATS)}")
    return fmt


def save_picture(image, path: str | Path) -> Path:
    """Save a ``PIL.Image`` atomically in the format its extension names (PNG, JPEG, ...).

    Raises:
        OutputError: unknown extension, or the file cannot be written.
    """
    fmt = picture_format(path)
    return atomic_write(path, lambda handle: image.save(handle, format=fmt))
