"""Per-entry metadata of a gallery index in SQLite (``meta.sqlite``), with generation stamps.

Every row carries ``added_gen`` (the generation whose write added it) and ``removed_gen`` (the
generation whose write removed it, or NULL). A reader at committed generation G sees exactly the
rows with ``added_gen <= G`` and ``removed_gen`` NULL or ``> G``, so a write that committed in
SQLite but whose manifest never landed (the writer was killed in between) is invisible, and the
next writer undoes it with :meth:`MetadataStore.rollback_to`. Rows removed in generation G stay
until the write of G + 2, so readers up to two generations behind still find them.

SQLite runs in WAL mode: readers never wait for the writer.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import GalleryIndexError

SQLITE_NAME = "meta.sqlite"
NO_CAMID = np.iinfo(np.int64).min  # stands for an unknown camid in int64 arrays

_SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    pid INTEGER,
    camid INTEGER,
    timestamp REAL,
    track_id INTEGER,
    tag TEXT,
    added_gen INTEGER NOT NULL,
    removed_gen INTEGER
);
CREATE INDEX entries_camid ON entries(camid);
CREATE INDEX entries_pid ON entries(pid);
CREATE INDEX entries_track ON entries(track_id);
CREATE INDEX entries_time ON entries(timestamp);
CREATE INDEX entries_removed ON entries(removed_gen) WHERE removed_gen IS NOT NULL;
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO state VALUES ('generation', 0);
"""
_VISIBLE = "added_gen <= :gen AND (removed_gen IS NULL OR removed_gen > :gen)"
_COLUMNS = "id, path, pid, camid, timestamp, track_id, tag"


def _optional_int(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise GalleryIndexError(f"entry {name} must be an integer or None, got {value!r}")


@dataclass(frozen=True)
class EntryMeta:
    """Metadata of one gallery image, given to :meth:`GalleryIndex.add`.

    Attributes:
        path: the image file (or any string locating the crop); required.
        pid: person id when known, else ``None``.
        camid: camera id, else ``None``.
        timestamp: capture time in seconds since the Unix epoch, else ``None``.
        track_id: tracker track id, else ``None``.
        tag: free-form text (e.g. a site or a batch name), else ``None``.
    """

    path: str
    pid: int | None = None
    camid: int | None = None
    timestamp: float | None = None
    track_id: int | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise GalleryIndexError(f"entry path must be a non-empty string, got {self.path!r}")
        for name in ("pid", "camid", "track_id"):
            object.__setattr__(self, name, _optional_int(getattr(self, name), name))
        if self.timestamp is not None:
            ok = isinstance(self.timestamp, (int, float, np.floating)) and not isinstance(self.timestamp, bool)
            if not ok or not math.isfinite(self.timestamp):
                raise GalleryIndexError(f"entry timestamp must be finite seconds or None, got {self.timestamp!r}")
            object.__setattr__(self, "timestamp", float(self.timestamp))
        if self.tag is not None and not isinstance(self.tag, str):
            raise GalleryIndexError(f"entry tag must be a string or None, got {self.tag!r}")


@dataclass(frozen=True, kw_only=True)
class Entry(EntryMeta):
    """An indexed entry: :class:`EntryMeta` with its stable integer ``id`` (keyword-only)."""

    id: int

    def as_dict(self) -> dict:
        return asdict(self)


class EntryPage(NamedTuple):
    """One page of :meth:`GalleryIndex.list_entries`: ``entries`` in id order and the ``total``
    number matching the filters (for paging)."""

    entries: list[Entry]
    total: int
    offset: int
    limit: int


def _row_to_entry(row: tuple) -> Entry:
    return Entry(id=row[0], path=row[1], pid=row[2], camid=row[3], timestamp=row[4], track_id=row[5], tag=row[6])


class MetadataStore:
    """The SQLite file of an index folder (see the module docstring for the generation rules)."""

    def __init__(self, path: Path, create: bool = False):
        self.path = path
        if not create and not path.is_file():
            raise GalleryIndexError(f"index {str(path.parent)!r} has no {path.name}")
        try:
            self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA journal_size_limit={64 * 2**20}")  # shrink the WAL after big writes
            if create:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
            self.generation()
        except sqlite3.DatabaseError as err:
            raise GalleryIndexError(f"{str(path)!r} is not a usable index database: {err}") from None

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def damage_named(self) -> Iterator[None]:
        """Turn SQLite's "malformed" / "not a database" errors into a GalleryIndexError naming the file
        (operational errors such as a busy database pass unchanged)."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):
                raise
            raise GalleryIndexError(f"index file {str(self.path)!r} is corrupt: {err}") from None

    def generation(self) -> int:
        """The generation of the last write committed in SQLite (may be ahead of the manifest)."""
        with self.damage_named():
            row = self._db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        if row is None:
            raise GalleryIndexError(f"{str(self.path)!r} has no generation record")
        return int(row[0])

    # ---- reading (at a committed generation) ----

    def live(self, gen: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (N,) int64 ascending, camids (N,) int64 with NO_CAMID for unknown)`` visible at ``gen``."""
        sql = f"SELECT id, IFNULL(camid, {NO_CAMID}) FROM entries WHERE {_VISIBLE} ORDER BY id"
        with self.damage_named():
            rows = self._db.execute(sql, {"gen": gen}).fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        camids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        return ids, camids

    def get(self, ids: Iterable[int], gen: int) -> dict[int, Entry]:
        """Entries of ``ids`` visible at ``gen``, by id (unknown ids are absent)."""
        sql = f"SELECT {_COLUMNS} FROM entries WHERE id IN (SELECT value FROM json_each(:ids)) AND {_VISIBLE}"
        rows = self._db.execute(sql, {"ids": json.dumps([int(i) for i in ids]), "gen": gen})
        return {row[0]: _row_to_entry(row) for row in rows}

    def page(self, gen: int, offset: int, limit: int, filters: dict) -> tuple[list[Entry], int]:
        """Entries visible at ``gen`` matching ``filters`` (see :func:`filter_sql`), in id order."""
        where, args = filter_sql(filters)
        args.update(gen=gen, offset=offset, limit=limit)
        cond = f"{_VISIBLE}{where}"
        total = self._db.execute(f"SELECT COUNT(*) FROM entries WHERE {cond}", args).fetchone()[0]
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE {cond} ORDER BY id LIMIT :limit OFFSET :offset", args)
        return [_row_to_entry(row) for row in rows], int(total)

    def integrity_problems(self) -> list[str]:
        """What SQLite's ``PRAGMA integrity_check`` finds (empty when the file is sound)."""
        try:
            rows = [r[0] for r in self._db.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as err:
            return [str(err)]
        return [] if rows == ["ok"] else rows

    def max_id(self) -> int:
        """The largest id of any row (live, removed or uncommitted); -1 when there is none."""
        return int(self._db.execute("SELECT IFNULL(MAX(id), -1) FROM entries").fetchone()[0])

    # ---- writing (under the writer lock) ----

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def insert(self, ids: np.ndarray, entries: Sequence[EntryMeta], gen: int) -> None:
        rows = ((int(i), e.path, e.pid, e.camid, e.timestamp, e.track_id, e.tag, gen) for i, e in zip(ids, entries))
        self._db.executemany(f"INSERT INTO entries ({_COLUMNS}, added_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def mark_removed(self, ids: np.ndarray, gen: int) -> None:
        self._db.execute(
            "UPDATE entries SET removed_gen = :gen WHERE id IN (SELECT value FROM json_each(:ids))",
            {"gen": gen, "ids": json.dumps(ids.tolist())},
        )

    def stamp(self, gen: int) -> None:
        """Record ``gen`` as written and drop rows removed two generations before it."""
        self._db.execute("DELETE FROM entries WHERE removed_gen IS NOT NULL AND removed_gen < :gen", {"gen": gen - 1})
        self._db.execute("UPDATE state SET value = :gen WHERE key = 'generation'", {"gen": gen})

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        """Abandon the open transaction, if any."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def rollback_to(self, gen: int) -> bool:
        """Undo writes of generations after ``gen`` that committed in SQLite only; True if any."""
        if self.generation() <= gen:
            return False
        self.begin()
        self._db.execute("DELETE FROM entries WHERE added_gen > :gen", {"gen": gen})
        self._db.execute("UPDATE entries SET removed_gen = NULL WHERE removed_gen > :gen", {"gen": gen})
        self._db.execute("UPDATE state SET value = :gen WHERE key = 'generation'", {"gen": gen})
        self.commit()
        return True


def filter_sql(filters: dict) -> tuple[str, dict]:
    """SQL ``AND ...`` clause and arguments for :meth:`GalleryIndex.list_entries` filters.

    Keys: ``camids`` (collection of camids to keep), ``pid``, ``track_id``, ``tag`` (equality),
    ``since`` / ``until`` (timestamp bounds in seconds, inclusive). ``None`` values are ignored.
    """
    clauses, args = [], {}
    camids: Collection[int] | None = filters.get("camids")
    if camids is not None:
        clauses.append("camid IN (SELECT value FROM json_each(:camids))")
        args["camids"] = json.dumps([int(c) for c in camids])
    for key in ("pid", "track_id", "tag"):
        if filters.get(key) is not None:
            clauses.append(f"{key} = :{key}")
            args[key] = filters[key]
    if filters.get("since") is not None:
        clauses.append("timestamp >= :since")
        args["since"] = float(filters["since"])
    if filters.get("until") is not None:
        clauses.append("timestamp <= :until")
        args["until"] = float(filters["until"])
    return "".join(f" AND {c}" for c in clauses), args
