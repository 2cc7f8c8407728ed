"""A persistent gallery index: faiss vectors, SQLite metadata, one folder, crash-safe writes.

Folder layout::

    IDX/
      manifest.json        commit point: generation, dim, kind, params, model, count, next_id,
                           CRC-32 checksums of the faiss file and of the committed vector rows
      meta.sqlite          entries (id, path, pid, camid, timestamp, track_id, tag) + generation stamps
      vectors.f32          append-only raw float32 vectors, row i = id i (for re-ranking, refinement,
                           rebuilds; the flat kind's faiss index is rebuilt from it on open)
      faiss-<gen>.index    the faiss index (ivf, ivfpq, hnsw) as generation <gen> wrote it; never modified
      writer.lock          flock of the one writer

How a write commits (one generation; :meth:`GalleryIndex.batch` groups several writes):

1. take the writer lock (waits up to ``lock_timeout`` s, then :class:`IndexLockedError`); catch up
   with the newest generation and undo what a killed writer left (SQLite rows stamped with a
   generation the manifest never committed, vector rows past ``next_id``, stray files);
2. append vectors past ``next_id`` and fsync; write ``faiss-<gen+1>.index`` (temporary + fsync +
   rename) unless the faiss index is unchanged (removals from ``hnsw``); insert / mark rows in
   SQLite stamped ``gen+1`` and commit that transaction;
3. replace ``manifest.json`` (temporary + fsync + rename + folder fsync): **the commit point**. It
   records the CRC-32 of the new faiss file (read back) and the vectors' running CRC-32, extended
   by the appended rows (``zlib.crc32(rows, previous)``), which covers exactly the rows up to
   ``next_id``: truncating a killed writer's rows needs no checksum update;
4. delete the faiss file of the old generation.

A ``kill -9`` before step 3 leaves the old manifest, which names the old faiss file, the old
``next_id`` and the old generation; readers filter SQLite rows by that generation, so they see the
old state exactly, and the next writer removes the leftovers. After step 3 everything of the new
generation is durable. Readers never take the lock and never wait: they load one generation
(faiss file, vectors up to its ``next_id``, SQLite rows visible at it) and keep serving it until
:meth:`GalleryIndex.refresh`.

Integrity: a reader checks what it loads against the manifest's checksums (the faiss file before
faiss parses it; for ``flat`` the vector rows it builds from, only the new ones on a refresh) and
its faiss index's dimension and size; :meth:`GalleryIndex.verify` checks everything. Manifests
written before checksums existed have none: their checks are skipped (``info()`` says so), and the
next write records checksums of the files as they are then.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from . import backends as fb
from .checks import check_camids, check_entries, check_ids, check_rows, is_int, show, unknown_ids
from .errors import GalleryIndexError
from .manifest import MANIFEST_NAME, IndexInfo, IndexManifest, IndexState, now_iso
from .metadata import NO_CAMID, SQLITE_NAME, Entry, EntryMeta, EntryPage, MetadataStore
from .search import QUERY_BLOCK, SearchResult, camera_groups, pad, refine_exact
from .store import (
    VECTORS_NAME,
    VectorFile,
    WriterLock,
    build_folder,
    check_new_folder,
    corrupt_file_error,
    file_crc32,
    read_state,
    remove_temporaries,
    replace_atomically,
    write_text_atomically,
)
from .verify import VerifyReport, verify_index

_ADD_BLOCK = 65536  # vectors per faiss add when rebuilding from the vectors file
_MAX_PAGE = 10000


class _Stale(Exception):
    """A writer committed a newer generation while this reader was loading; load again."""


@dataclass
class _Txn:
    """The write in progress: the generation it will commit and the state it builds."""

    gen: int
    state: IndexState
    writes: int = 0  # counted before each write changes anything
    faiss_changed: bool = False
    broken: bool = False  # a write failed half-way inside a batch that went on


class GalleryIndex:
    """A gallery of embeddings with per-entry metadata, searchable by inner product.

    Scores are inner products of L2-normalised embeddings (cosine similarity, larger is closer)
    unless the manifest says ``normalized=False``. Ids are stable int64 values: removing entries
    never renumbers the others and an id is never given out twice.

    Build one with :meth:`create`, open one with :meth:`open`. An object is safe to share between
    threads (searches and writes of one object take turns); other processes may read the folder
    at any time, and one process at a time may write it.
    """

    def __init__(self, folder: Path, device: str, lock_timeout: float, search_overrides: dict):
        """Use :meth:`create` or :meth:`open`."""
        self.folder = folder
        self._device = device
        self._search_overrides = search_overrides
        self._lock = WriterLock(folder, lock_timeout)
        self._mutex = threading.RLock()
        self._txn: _Txn | None = None
        self._meta: MetadataStore | None = None
        self._index = None
        self._selectors: dict = {}

    # ---- create / open ----

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        dim: int,
        manifest: IndexManifest,
        kind: str = "flat",
        *,
        device: str = "auto",
        lock_timeout: float = 30.0,
        **params,
    ) -> GalleryIndex:
        """Create an empty index folder (atomically: it appears complete or not at all).

        Args:
            folder: the index folder; must not exist or be empty.
            dim: embedding dimension D.
            manifest: the model and preprocessing that make the embeddings.
            kind: ``"flat"`` (exact), ``"ivf"``, ``"ivfpq"`` or ``"hnsw"``.
            device: ``"auto"`` (faiss GPU when installed and visible), ``"cpu"`` or ``"cuda"``.
            lock_timeout: seconds a write waits for another writer.
            **params: the kind's build parameters and default search parameters; see
                :mod:`reidkit.index.backends` (e.g. ``nlist=4096, nprobe=64`` for ``ivf``).

        Returns:
            The open, empty index.

        Raises:
            GalleryIndexError: ``folder`` exists and is not an empty folder; a bad ``dim``,
                ``kind`` or parameter.
        """
        fb.require_faiss()
        folder = Path(folder)
        _check_device(device)
        if not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
            raise GalleryIndexError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(manifest, IndexManifest):
            raise GalleryIndexError(f"manifest must be an IndexManifest, got {type(manifest).__name__}")
        params = fb.resolve_params(kind, dim, params)
        check_new_folder(folder)
        state = IndexState(dim, kind, params, manifest, trained=kind not in fb.TRAINED_KINDS, vectors_crc32=0,
                           reidkit_version=__version__)
        build_folder(folder, state)
        return cls.open(folder, device=device, lock_timeout=lock_timeout)

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike,
        *,
        expect_model: IndexManifest | None = None,
        force: bool = False,
        device: str = "auto",
        lock_timeout: float = 30.0,
        **search_params,
    ) -> GalleryIndex:
        """Open an index folder for searching (and writing, one process at a time).

        What it loads is checked first against the manifest's CRC-32 checksums (the faiss file
        before faiss parses it; for ``flat`` the vector rows it builds the index from), and the
        faiss index's dimension and size against the manifest; :meth:`verify` checks the rest.
        A manifest without checksums (an index written before they existed) opens unchecked.
        Measured cost of the checks on a 10^5 x 512 index, 2-core AMD EPYC, files in the page
        cache, other jobs running (``python benchmarks/bench_index_open.py --n 100000 --dim
        512 --kinds flat ivf hnsw``, two runs): ``flat`` 0.49-0.59 s without, +0.10-0.16 s;
        ``ivf`` 0.14-0.20 s, +0.29 s; ``hnsw`` 0.45-0.47 s, +0.17-0.22 s (about 200 MB read by
        ``zlib.crc32`` at ~1 GB/s). ``verify()``: 0.7-1.5 s.

        Args:
            folder: the index folder.
            expect_model: the model the caller will embed queries with; an index built by another
                model (other weights sha256, input size, flip or normalisation) is refused.
            force: open despite a model mismatch.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (faiss GPU) for searches.
            lock_timeout: seconds a write waits for another writer.
            **search_params: defaults for this session's searches: ``nprobe`` (ivf, ivfpq),
                ``refine`` (ivfpq), ``ef_search`` (hnsw).

        Raises:
            GalleryIndexError: the folder is missing, is not an index, or is corrupt (a file whose
                checksum differs: one line naming it) or inconsistent; an unknown search parameter.
            ModelMismatchError: ``expect_model`` differs (the message names both models).
        """
        fb.require_faiss()
        folder = Path(folder)
        _check_device(device)
        state = read_state(folder)
        if expect_model is not None and not force:
            state.manifest.check_compatible(expect_model, folder)
        self = cls(folder, device, lock_timeout, fb.check_search_params(state.kind, search_params))
        self._load()
        return self

    def close(self) -> None:
        """Release the database connection and the in-memory index."""
        with self._mutex:
            if self._meta is not None:
                self._meta.close()
                self._meta = None
            self._index = self._search_index = None

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        """Number of live entries."""
        return len(self._ids)

    def __repr__(self) -> str:
        s = self._state
        return f"GalleryIndex({str(self.folder)!r}, kind={s.kind!r}, dim={s.dim}, count={len(self)}, generation={s.generation})"

    # ---- properties and reading ----

    @property
    def dim(self) -> int:
        return self._state.dim

    @property
    def kind(self) -> str:
        return self._view_state.kind

    @property
    def manifest(self) -> IndexManifest:
        return self._state.manifest

    @property
    def _view_gen(self) -> int:
        """Generation whose SQLite rows this object sees: the one being written inside a batch."""
        return self._txn.gen if self._txn is not None else self._state.generation

    @property
    def _view_state(self) -> IndexState:
        """The state this object's searches use: the one being built inside a batch."""
        return self._txn.state if self._txn is not None else self._state

    @property
    def generation(self) -> int:
        """The committed generation this object serves."""
        return self._state.generation

    def info(self) -> IndexInfo:
        """Dimension, kind, parameters, model, counts, sizes on disk and the search device."""
        with self._mutex:
            sizes = sum(_size(p) for p in self.folder.iterdir())
            vec = _size(self.folder / VECTORS_NAME)
            ntotal = 0 if self._index is None else int(self._index.ntotal)
            return IndexInfo(self.folder, self._state, sizes, vec, ntotal, self._search_device)

    def verify(self) -> VerifyReport:
        """Check every file of the newest committed generation, reading all of it once.

        Opening checks only what it loads (the faiss file; for ``flat`` the vectors). This also
        checks every stored vector (the manifest's ``vectors_crc32``; finite; unit length when
        normalised), the faiss file's checksum, the loaded faiss index's dimension, training,
        count and ids against the manifest and SQLite, and SQLite itself (``PRAGMA
        integrity_check``, generation, live entries, ids below ``next_id``). Checks of files
        whose checksum the manifest does not record (an index written before reidkit recorded
        them) are listed as skipped. Reads the vectors file whole, so it takes about as long as
        opening a ``flat`` index of the same size.

        Returns:
            :class:`VerifyReport`: what was checked, what was skipped, harmless leftovers.

        Raises:
            GalleryIndexError: one line listing every problem, each naming its file; also
                inside :meth:`batch` (uncommitted writes cannot be verified).
        """
        with self._mutex:
            if self._txn is not None:
                raise GalleryIndexError(f"index {str(self.folder)!r}: verify() inside a batch; call it after the batch")
            for _ in range(10):
                self.refresh()
                try:
                    return verify_index(self.folder, self._state, self._meta, self._index, self._ids)
                except (GalleryIndexError, OSError) as err:
                    if read_state(self.folder).generation != self._state.generation:
                        continue  # a writer committed meanwhile (and removed old files): check the new one
                    if isinstance(err, OSError):
                        raise GalleryIndexError(f"index {str(self.folder)!r} failed verification: {err}") from None
                    raise
            raise GalleryIndexError(f"index {str(self.folder)!r} changes faster than it can be verified")

    def refresh(self) -> bool:
        """Load the newest committed generation if another process wrote one; True if it did."""
        with self._mutex:
            if self._txn is not None or read_state(self.folder).generation == self._state.generation:
                return False
            self._load()
            return True

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Entry]:
        """Metadata of ``ids`` (in that order).

        Raises:
            GalleryIndexError: an id that is not in the index (the message lists them).
        """
        ids = check_ids(ids)
        with self._mutex:
            found = self._meta.get(ids.tolist(), self._view_gen)
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise GalleryIndexError(f"id(s) {show(missing)} not in index {str(self.folder)!r}")
        return [found[int(i)] for i in ids]

    def features(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored embeddings of ``ids``, ``(N, D)`` float32 (L2-normalised if the manifest says so).

        Raises:
            GalleryIndexError: an id that is not in the index.
        """
        with self._mutex:
            ids = self._live_ids(ids)
            return np.array(self._vectors[ids], dtype=np.float32)

    def list_entries(
        self,
        offset: int = 0,
        limit: int = 100,
        *,
        camids: Collection[int] | None = None,
        pid: int | None = None,
        track_id: int | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> EntryPage:
        """One page of entries in id order, filtered; ``EntryPage.total`` counts all matches.

        Args:
            offset: entries to skip.
            limit: page size, 1 to 10000.
            camids: only these cameras. pid, track_id, tag: equality filters.
            since, until: timestamp bounds in seconds since the epoch, inclusive.

        Raises:
            GalleryIndexError: a negative offset or a limit outside 1..10000.
        """
        if not (is_int(offset) and offset >= 0) or not (is_int(limit) and 1 <= limit <= _MAX_PAGE):
            raise GalleryIndexError(f"list_entries: offset must be >= 0 and limit in 1..{_MAX_PAGE}; got {offset!r}, {limit!r}")
        filters = dict(camids=check_camids(camids, "camids"), pid=pid, track_id=track_id, tag=tag, since=since, until=until)
        with self._mutex:
            entries, total = self._meta.page(self._view_gen, offset, limit, filters)
        return EntryPage(entries, total, offset, limit)

    # ---- search ----

    def search(
        self,
        queries,
        topk: int = 10,
        *,
        camids: Collection[int] | None = None,
        exclude_camids: Collection[int] | None = None,
        query_camids: Sequence[int] | np.ndarray | None = None,
        **search_params,
    ) -> SearchResult:
        """Top-k gallery entries of each query, by inner product (larger is closer).

        Args:
            queries: ``(Q, D)`` float32 embeddings (numpy or torch), normalised here if the
                manifest says so.
            topk: k.
            camids: search only entries of these cameras.
            exclude_camids: skip entries of these cameras.
            query_camids: ``(Q,)`` camera of each query; entries of a query's own camera are
                skipped for it.
            **search_params: ``nprobe`` / ``refine`` / ``ef_search`` for this call.

        Returns:
            :class:`SearchResult`: ids and scores ``(Q, k)``, padded with -1 / -inf when fewer
            than k entries qualify, and the metadata of every hit. ``flat`` is exact; the others
            are approximate (with filters, ``hnsw`` may return fewer than k).

        Raises:
            GalleryIndexError: empty queries, a dimension mismatch, NaN/inf, a bad ``topk`` or
                ``query_camids`` length, an unknown search parameter.
        """
        q = self._rows(queries, "queries")
        if not (is_int(topk) and topk > 0):
            raise GalleryIndexError(f"topk must be a positive integer, got {topk!r}")
        camids, exclude_camids = check_camids(camids, "camids"), check_camids(exclude_camids, "exclude_camids")
        if query_camids is not None:
            query_camids = np.asarray(query_camids, dtype=np.int64).reshape(-1)
            if len(query_camids) != len(q):
                raise GalleryIndexError(f"query_camids has {len(query_camids)} values for {len(q)} queries")
        with self._mutex:
            params = {**self._view_state.params, **self._search_overrides, **fb.check_search_params(self.kind, search_params)}
            for _ in range(2):
                scores, ids = self._search_groups(q, topk, params, camids, exclude_camids, query_camids)
                metadata = self._metadata_of(ids)
                if metadata is not None:
                    return SearchResult(ids, scores, metadata)
                if self._txn is not None:
                    break
                self._load()  # metadata rows purged under a reader several generations behind
        raise GalleryIndexError(f"index {str(self.folder)!r}: search hits without metadata (inconsistent index)")

    def _search_groups(self, q, topk, params, camids, exclude_camids, query_camids):
        ids = np.full((len(q), topk), -1, dtype=np.int64)
        scores = np.full((len(q), topk), -np.inf, dtype=np.float32)
        if self._index is None or len(self._ids) == 0:
            return scores, ids
        for rows, mask, key in camera_groups(len(q), self._camids, camids, exclude_camids, query_camids):
            selector = self._selector(mask, key)
            if selector is False:
                continue  # the filters leave no entry
            for start in range(0, len(rows), QUERY_BLOCK):
                block = rows[start : start + QUERY_BLOCK]
                scores[block], ids[block] = self._search_block(q[block], topk, params, selector)
        return scores, ids

    def _selector(self, mask: np.ndarray | None, key: tuple):
        """faiss selector for a mask over live entries; None = all, False = none."""
        if mask is None and self._index.ntotal == len(self._ids):
            return None
        if key not in self._selectors:
            allowed = self._ids if mask is None else self._ids[mask]
            id_space = self._view_state.next_id
            self._selectors[key] = fb.bitmap_selector(allowed, id_space) if len(allowed) else (False, None)
        return self._selectors[key][0]

    def _search_block(self, q: np.ndarray, topk: int, params: dict, selector):
        refine = params.get("refine", 1) if self.kind == "ivfpq" else 1
        k = topk * refine
        sp = fb.search_params(self.kind, params, k, selector)
        index = self._index if selector is not None else self._search_index
        try:
            with fb.threads_for(len(q)):
                scores, ids = index.search(q, k, params=sp)
        except RuntimeError:
            if index is self._index:
                raise
            self._search_index, self._search_device = self._index, "cpu"  # GPU refused; stay on CPU
            with fb.threads_for(len(q)):
                scores, ids = self._index.search(q, k, params=sp)
        if refine > 1:
            scores, ids = refine_exact(q, ids, self._vectors, topk)
        return pad(scores, ids, topk)

    def _metadata_of(self, ids: np.ndarray) -> list[list[Entry]] | None:
        wanted = np.unique(ids[ids >= 0])
        found = self._meta.get(wanted.tolist(), self._view_gen)
        if len(found) != len(wanted):
            return None
        return [[found[i] for i in row if i >= 0] for row in ids.tolist()]

    # ---- writing ----

    @contextlib.contextmanager
    def batch(self) -> Iterator[GalleryIndex]:
        """Group writes: everything inside commits as one generation at the end, or not at all.

        Holds the writer lock (and this object's mutex) for the whole block; searches and reads of
        this object inside the block see the block's writes. If the block raises, nothing of it
        reaches the disk and this object reloads the last committed generation. A write that fails
        half-way (after changing something) makes the whole batch fail, even if the block catches
        its exception.

        Raises:
            IndexLockedError: another process writes the index for longer than ``lock_timeout``.
        """
        with self._mutex:
            if self._txn is not None:
                yield from self._nested(self._txn)
                return
            with self._lock.held():
                self._begin()
                try:
                    yield self
                    self._commit()
                except BaseException:
                    self._abort()
                    raise
                finally:
                    self._txn = None

    def _nested(self, txn: _Txn) -> Iterator[GalleryIndex]:
        writes = txn.writes
        try:
            yield self
        except BaseException:
            txn.broken = txn.broken or txn.writes != writes  # the failed write had changed something
            raise

    def add(self, features, entries: Sequence[EntryMeta]) -> np.ndarray:
        """Add embeddings with their metadata.

        Args:
            features: ``(N, D)`` float32 (numpy or torch); L2-normalised here if the manifest says
                so. An untrained ``ivf`` / ``ivfpq`` index is trained on them first.
            entries: N :class:`EntryMeta` (or dicts of its fields), one per row.

        Returns:
            ``(N,)`` int64 ids given to the new entries (consecutive, never used before).

        Raises:
            GalleryIndexError: empty or mis-shaped features, a dimension mismatch, NaN/inf or
                zero vectors, a wrong number of entries or bad metadata, too few vectors to train.
            IndexLockedError: another writer holds the lock.
        """
        x = self._rows(features, "features")
        entries = check_entries(entries, len(x))
        with self.batch():
            txn = self._txn
            if self._index is None:
                self._train(x)
            txn.writes += 1
            txn.faiss_changed = True
            start = txn.state.next_id
            ids = np.arange(start, start + len(x), dtype=np.int64)
            crc = txn.state.vectors_crc32
            if crc is None:  # written before checksums: record them from this write on
                crc = self._vectors_file.crc32(0, start)
            self._vectors_file.write_rows(start, x)
            self._vectors = self._vectors_file.reader(start + len(x))
            self._index.add_with_ids(x, ids)
            self._meta.insert(ids, entries, txn.gen)
            cams = np.array([NO_CAMID if e.camid is None else e.camid for e in entries], dtype=np.int64)
            self._ids, self._camids = np.concatenate([self._ids, ids]), np.concatenate([self._camids, cams])
            self._selectors.clear()
            txn.state = txn.state.replace(next_id=start + len(x), count=len(self._ids), vectors_crc32=zlib.crc32(x, crc))
        return ids

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        """Remove entries; the other ids are unchanged.

        ``hnsw`` keeps removed vectors in its graph (faiss cannot delete from it) and filters
        them out of every search; :meth:`rebuild` drops them.

        Raises:
            GalleryIndexError: no ids, or an id not in the index (nothing is removed then).
            IndexLockedError: another writer holds the lock.
        """
        ids = np.unique(check_ids(ids))
        with self.batch():
            txn = self._txn
            ids = self._live_ids(ids)
            txn.writes += 1
            if self.kind != "hnsw":
                txn.faiss_changed = True
                removed = self._index.remove_ids(fb.faiss.IDSelectorBatch(ids))
                assert removed == len(ids), (removed, len(ids))
            self._meta.mark_removed(ids, txn.gen)
            keep = ~np.isin(self._ids, ids)
            self._ids, self._camids = self._ids[keep], self._camids[keep]
            self._selectors.clear()
            txn.state = txn.state.replace(count=len(self._ids))

    def train(self, features) -> None:
        """Train an empty ``ivf`` / ``ivfpq`` index on ``features (N, D)`` without adding them.

        Raises:
            GalleryIndexError: the kind needs no training, the index is already trained (use
                :meth:`rebuild`), or too few vectors.
        """
        x = self._rows(features, "features")
        if self.kind not in fb.TRAINED_KINDS:
            raise GalleryIndexError(f"index {str(self.folder)!r} is of kind {self.kind!r}, which needs no training")
        with self.batch():
            if self._index is not None:
                raise GalleryIndexError(f"index {str(self.folder)!r} is already trained; rebuild() re-trains it")
            self._train(x)

    def rebuild(self, kind: str | None = None, **params) -> None:
        """Rebuild the faiss index from the stored vectors of the live entries.

        Drops removed vectors still in an ``hnsw`` graph, re-trains ``ivf`` / ``ivfpq`` on the
        current entries, or changes the kind (``rebuild("ivfpq", nlist=4096)``). Ids and
        metadata are unchanged. For the same kind, parameters not given keep their values
        (``nlist=None`` chooses nlist again from the current number of entries, and a new nlist
        derives nprobe again).

        Raises:
            GalleryIndexError: a bad kind or parameter; too few entries to train.
        """
        kind = kind or self.kind
        if kind == self.kind:  # keep the current parameters, except an nprobe derived from a changed nlist
            current = self._view_state.params
            auto = {"nprobe": None} if "nlist" in params and "nprobe" in current else {}
            params = {**current, **auto, **params}
        params = fb.resolve_params(kind, self.dim, params)
        with self.batch():
            txn = self._txn
            txn.writes += 1
            txn.faiss_changed = True
            txn.state = txn.state.replace(kind=kind, params=params, trained=kind not in fb.TRAINED_KINDS)
            self._index = None
            if kind not in fb.TRAINED_KINDS:
                self._index = fb.new_index(kind, self.dim, params)
            elif len(self._ids):
                self._train(self._vectors, rows=self._ids)
            if self._index is not None:
                _add_from_vectors(self._index, self._vectors, self._ids)
            self._selectors.clear()

    def _train(self, x: np.ndarray, rows: np.ndarray | None = None) -> None:
        txn = self._txn
        index, params = fb.train_index(txn.state.kind, self.dim, txn.state.params, x, rows)
        txn.writes += 1
        txn.faiss_changed = True
        self._index = index
        txn.state = txn.state.replace(params=params, trained=True)

    def _begin(self) -> None:
        disk = read_state(self.folder)
        self._meta.rollback_to(disk.generation)
        if disk.generation != self._state.generation:
            self._load()
        self._vectors_file.truncate(self._state.next_id)
        remove_temporaries(self.folder)
        self._remove_faiss_files(keep=self._state.faiss_file)
        self._meta.begin()
        self._txn = _Txn(self._state.generation + 1, self._state)

    def _commit(self) -> None:
        txn = self._txn
        if txn.broken:
            raise GalleryIndexError(
                f"a write to index {str(self.folder)!r} failed half-way inside this batch; nothing was committed"
            )
        if not txn.writes:
            self._meta.rollback()
            return
        state = txn.state
        faiss_file, faiss_bytes, faiss_crc = state.faiss_file, state.faiss_bytes, state.faiss_crc32
        if state.kind == "flat" or self._index is None:
            faiss_file, faiss_bytes, faiss_crc = None, None, None
        elif txn.faiss_changed:
            faiss_file = f"faiss-{txn.gen:010d}.index"
            path = self.folder / faiss_file
            replace_atomically(path, lambda tmp: fb.write_index(self._index, tmp))
            faiss_bytes, faiss_crc = path.stat().st_size, file_crc32(path)
        elif faiss_crc is None:  # written before checksums: record the file as it is
            faiss_crc = file_crc32(self.folder / faiss_file)
        self._vectors_file.sync()
        self._meta.stamp(txn.gen)
        self._meta.commit()
        state = state.replace(generation=txn.gen, faiss_file=faiss_file, faiss_bytes=faiss_bytes, faiss_crc32=faiss_crc,
                              updated=now_iso(), reidkit_version=__version__)
        write_text_atomically(self.folder / MANIFEST_NAME, state.to_json())  # the commit point
        self._state = state
        self._vectors = self._vectors_file.reader(state.next_id)
        self._after_change()
        self._remove_faiss_files(keep=faiss_file)

    def _abort(self) -> None:
        txn = self._txn
        self._meta.rollback()
        if txn is not None and txn.writes:
            disk = read_state(self.folder)
            self._meta.rollback_to(disk.generation)  # SQLite committed, manifest not
            self._vectors_file.truncate(disk.next_id)
            self._index = None
            self._load()

    def _rows(self, x, what: str) -> np.ndarray:
        where = f"index {str(self.folder)!r} of {self.manifest.describe()}"
        return check_rows(x, self.dim, self.manifest.normalized, what, where)

    def _live_ids(self, ids) -> np.ndarray:
        """``ids`` as int64, all of them live entries, or a GalleryIndexError listing the others."""
        ids = check_ids(ids)
        unknown = unknown_ids(ids, self._ids)
        if len(unknown):
            raise GalleryIndexError(f"id(s) {show(unknown.tolist())} not in index {str(self.folder)!r}")
        return ids

    def _remove_faiss_files(self, keep: str | None) -> None:
        for path in self.folder.glob("faiss-*.index"):
            if path.name != keep:
                with contextlib.suppress(OSError):
                    path.unlink()

    # ---- loading ----

    def _load(self) -> None:
        for _ in range(10):
            try:
                return self._load_generation(read_state(self.folder))
            except _Stale:
                continue
        raise GalleryIndexError(f"index {str(self.folder)!r} changes faster than it can be loaded")

    def _load_generation(self, state: IndexState) -> None:
        if self._meta is None:
            self._meta = MetadataStore(self.folder / SQLITE_NAME)
        if self._meta.generation() < state.generation:
            raise GalleryIndexError(
                f"index {str(self.folder)!r} is inconsistent: {SQLITE_NAME} is at generation "
                f"{self._meta.generation()}, {MANIFEST_NAME} at {state.generation}"
            )
        vectors_file = VectorFile(self.folder, state.dim)
        vectors = vectors_file.reader(state.next_id)
        ids, camids = self._meta.live(state.generation)
        if len(ids) != state.count:
            self._raise_inconsistent(state, f"{SQLITE_NAME} holds {len(ids)} entries, {MANIFEST_NAME} {state.count}")
        index = self._load_faiss(state, ids, vectors_file, vectors)
        if index is not None and index.d != state.dim:
            what = state.faiss_file or "the faiss index"
            self._raise_inconsistent(state, f"{what} holds {index.d}-d vectors, {MANIFEST_NAME} says dim {state.dim}")
        ntotal = 0 if index is None else index.ntotal
        if (ntotal != state.count and state.kind != "hnsw") or ntotal < state.count:
            self._raise_inconsistent(state, f"the faiss index holds {ntotal} vectors, {MANIFEST_NAME} {state.count}")
        self._state, self._vectors_file, self._vectors = state, vectors_file, vectors
        self._ids, self._camids, self._index = ids, camids, index
        self._after_change()

    def _load_faiss(self, state: IndexState, ids: np.ndarray, vectors_file: VectorFile, vectors: np.ndarray):
        """The faiss index of ``state``: read from its file, or for ``flat`` built from the
        vectors; what is read is checked against the manifest's checksums when it has them."""
        if state.kind == "flat":
            return self._flat_from_vectors(state, ids, vectors_file, vectors)
        if state.faiss_file is None:
            if state.count:
                raise GalleryIndexError(f"corrupt index manifest in {str(self.folder)!r}: no faiss_file but {state.count} entries")
            return None if state.kind in fb.TRAINED_KINDS else fb.new_index(state.kind, state.dim, state.params)
        path = self.folder / state.faiss_file
        if not path.is_file() or path.stat().st_size != state.faiss_bytes:
            self._raise_inconsistent(state, f"{state.faiss_file} is missing or of the wrong size")
        if state.faiss_crc32 is not None:
            try:
                got = file_crc32(path)
            except OSError as err:  # removed by a writer that committed meanwhile: load that generation
                self._raise_inconsistent(state, f"{state.faiss_file} cannot be read ({err.strerror})")
            if got != state.faiss_crc32:
                self._raise_stale_or(state, corrupt_file_error(path, got, state.faiss_crc32))
        try:
            return fb.read_index(path)
        except RuntimeError as err:
            self._raise_inconsistent(state, f"{state.faiss_file} cannot be read ({str(err).splitlines()[-1]})")

    def _flat_from_vectors(self, state: IndexState, ids: np.ndarray, vectors_file: VectorFile, vectors: np.ndarray):
        """The flat index of ``ids``: updated in place from the loaded one when possible.

        The rows it reads are checked against the manifest's ``vectors_crc32``: all committed
        rows for a fresh index, the rows added since the loaded generation for an update.
        """
        old = self._index
        if old is None or self._state.kind != "flat" or self._state.dim != state.dim:
            self._check_vectors(state, vectors_file, 0, 0)
            index = fb.new_index("flat", state.dim, state.params)
            _add_from_vectors(index, vectors, ids)
            return index
        loaded = self._state
        start, crc = (0, 0) if loaded.vectors_crc32 is None else (loaded.next_id, loaded.vectors_crc32)
        self._check_vectors(state, vectors_file, start, crc)
        gone = np.setdiff1d(self._ids, ids, assume_unique=True)
        new = np.setdiff1d(ids, self._ids, assume_unique=True)
        self._index = self._search_index = None  # if this fails half-way, the next load starts afresh
        if len(gone):
            old.remove_ids(fb.faiss.IDSelectorBatch(gone))
        _add_from_vectors(old, vectors, new)
        return old

    def _check_vectors(self, state: IndexState, vectors_file: VectorFile, start: int, crc: int) -> None:
        """Rows ``start .. next_id - 1`` continue ``crc`` to the committed ``vectors_crc32``."""
        try:
            vectors_file.check_crc32(start, state.next_id, crc, state.vectors_crc32)
        except GalleryIndexError as err:
            self._raise_stale_or(state, err)

    def _raise_inconsistent(self, state: IndexState, what: str) -> None:
        self._raise_stale_or(state, GalleryIndexError(f"index {str(self.folder)!r} is inconsistent: {what}"))

    def _raise_stale_or(self, state: IndexState, err: GalleryIndexError) -> None:
        """Raise ``err``, or :class:`_Stale` if a writer committed since ``state`` was read."""
        if read_state(self.folder).generation != state.generation:
            raise _Stale()
        raise err

    def _after_change(self) -> None:
        self._selectors.clear()
        if self._index is None:
            self._search_index, self._search_device = None, "cpu"
        else:
            self._search_index, self._search_device = fb.to_device(self._index, self.kind, self._device)


def _size(path: Path) -> int:
    """Size in bytes of a file, 0 if it is gone (a writer may remove old files meanwhile)."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise GalleryIndexError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def _add_from_vectors(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    for start in range(0, len(ids), _ADD_BLOCK):
        block = ids[start : start + _ADD_BLOCK]
        index.add_with_ids(np.ascontiguousarray(vectors[block], np.float32), block)
