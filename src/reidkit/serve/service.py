"""The search service without HTTP: uploads in, ranked gallery entries out.

:class:`SearchService` holds an open :class:`~reidkit.index.GalleryIndex` and an
:class:`~reidkit.Embedder` for the model that built it, and does what each endpoint of
:mod:`reidkit.serve.app` asks. Every bad input raises a :class:`ServiceError` whose ``status`` is
the HTTP code to answer (400, 403, 404, 409, 413) and whose message names the field at fault.

Uploads are decoded by :func:`reidkit.data.read_image` (regular file, pixel limit checked before
decoding, EXIF orientation, any mode to RGB) from a private temporary file that is deleted at
once; the client's file name is never used. Thumbnails are read from the path the index stored
for an id, never from a path in the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import ImageReadError, read_image
from ..index import EntryMeta, GalleryIndex, GalleryIndexError, IndexLockedError, rerank_result

SCORE_COSINE = "cosine similarity, larger is closer"
SCORE_RERANKED = "negated k-reciprocal re-ranked distance, larger is closer"
RERANK_CANDIDATES = 100  # entries retrieved before re-ranking (see reidkit.index.rerank_result)


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts.

    Attributes:
        max_upload_bytes: largest uploaded file, in bytes (413 above).
        max_pixels: largest image, width x height in pixels, checked before decoding (413 above;
            this also stops decompression bombs).
        max_topk: largest ``topk`` of a search.
        max_page: largest page of ``GET /gallery``.
        max_files: most images in one ``POST /gallery``.
        refresh_seconds: how often the index folder is checked for a newer generation.
        thumbnail_size: ``(width, height)`` in pixels a thumbnail fits in.
    """

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 16_777_216
    max_topk: int = 100
    max_page: int = 200
    max_files: int = 16
    refresh_seconds: float = 1.0
    thumbnail_size: tuple[int, int] = (128, 256)

    @property
    def max_request_bytes(self) -> int:
        """A request body limit that fits ``max_files`` uploads and the form around them."""
        return self.max_files * self.max_upload_bytes + 2**20


class SearchService:
    """Searches, browses and (optionally) grows a gallery index; safe to call from many threads.

    Args:
        index: the open index.
        embedder: embeds query images with the model that built the index (the caller checks
            they belong together, as :func:`reidkit.cli.serve.open_service` does).
        card: the model card (:func:`model_card`) shown by ``GET /info`` and the page.
        writable: whether :meth:`add` is allowed.
        upload_dir: where added images are stored (default ``<index>/uploads``).
        limits: :class:`ServiceLimits`.
    """

    def __init__(self, index: GalleryIndex, embedder, card: dict | None = None, writable: bool = False,
                 upload_dir: str | os.PathLike | None = None, limits: ServiceLimits = ServiceLimits()):
        self.index, self.embedder, self.card, self.writable, self.limits = index, embedder, card or {}, writable, limits
        self.upload_dir = Path(upload_dir) if upload_dir else Path(index.folder) / "uploads"
        self._tmp = tempfile.TemporaryDirectory(prefix="reidkit-serve-")  # private (mode 0700)
        self._refresh_lock = threading.Lock()
        self._checked = time.monotonic()
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    def close(self) -> None:
        self.index.close()
        self._tmp.cleanup()

    # ------------------------------------------------------------------ uploads
    def decode_upload(self, data: bytes, field: str = "file"):
        """An uploaded file's bytes as an RGB ``PIL.Image``.

        Raises:
            ServiceError: 400 empty, not an image, truncated or corrupt; 413 above
                ``max_upload_bytes`` or ``max_pixels`` (the message names ``field``).
        """
        if not data:
            raise ServiceError(400, f"the upload {field!r} is empty")
        if len(data) > self.limits.max_upload_bytes:
            raise ServiceError(413, f"the upload {field!r} has {len(data):,} bytes; the limit is {self.limits.max_upload_bytes:,}")
        fd, path = tempfile.mkstemp(dir=self._tmp.name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return read_image(path, max_pixels=self.limits.max_pixels)
        except ImageReadError as err:
            status = 413 if "limit" in err.reason else 400
            reason = err.reason.replace(f" {path!r}", "").replace(path, "it")  # the temporary name means nothing to the client
            raise ServiceError(status, f"the upload {field!r} is not a readable image: {reason}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Load a generation another process committed, at most every ``refresh_seconds``."""
        now = time.monotonic()
        if now - self._checked < self.limits.refresh_seconds or not self._refresh_lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            self.index.refresh()
        except GalleryIndexError:
            pass  # a writer is mid-commit or the folder is briefly inconsistent: keep serving what is loaded
        finally:
            self._refresh_lock.release()

    def info(self) -> dict:
        """Model, model card, index size and dimension, limits (``GET /info``)."""
        self.refresh()
        m, index = self.index.manifest, self.index
        return {
            "model": {"name": m.model_name, "sha256": m.model_sha256, "input_size": list(m.input_size), "flip": m.flip,
                      "embedder": self.embedder.describe()},
            "card": self.card,
            "index": {"count": len(index), "dim": index.dim, "kind": index.kind, "generation": index.generation,
                      "normalized": m.normalized},
            "score": SCORE_COSINE,
            "writable": self.writable,
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes, "max_pixels": self.limits.max_pixels,
                       "max_topk": self.limits.max_topk, "max_page": self.limits.max_page,
                       "max_files": self.limits.max_files},
        }

    def _entry(self, entry_id: int):
        try:
            return self.index.get([entry_id])[0]
        except GalleryIndexError:
            raise ServiceError(404, f"id {entry_id} is not in the index") from None

    def search(self, image=None, entry_id: int | None = None, *, topk: int = 10, rerank: bool = False,
               camids: Sequence[int] | None = None, exclude_camids: Sequence[int] | None = None,
               exclude_own_camera: bool = False, query_camid: int | None = None, query_pid: int | None = None) -> dict:
        """Top-k entries for a query image or a gallery entry (``POST /search``).

        Args:
            image: the query as a ``PIL.Image`` (from :meth:`decode_upload`), or
            entry_id: an entry of the index; its stored embedding is the query and the entry
                itself is left out of the results.
            topk: matches to return, 1 to ``max_topk``.
            rerank: k-reciprocal re-ranking of the best ``RERANK_CANDIDATES`` (Zhong et al. 2017).
            camids: search only these cameras. exclude_camids: skip these cameras.
            exclude_own_camera: skip the query's camera (an entry's own camid, or ``query_camid``
                for an image).
            query_camid, query_pid: what is known of an uploaded query (a gallery entry brings
                its own); with a pid, each match says whether it is the same person.

        Returns:
            ``{"query": {...}, "score": what the scores mean, "matches": [{"rank", "id", "score",
            "path", "pid", "camid", "timestamp", "track_id", "tag", "match"}, ...]}``; ``match``
            is true/false when both pids are known, else null.

        Raises:
            ServiceError: 400 neither or both of ``image`` / ``entry_id``, a bad ``topk``, or
                ``exclude_own_camera`` without a known camera; 404 an unknown ``entry_id``.
        """
        if (image is None) == (entry_id is None):
            raise ServiceError(400, "give either an image upload in 'file' or the 'id' of a gallery entry, not both or neither")
        if not 1 <= topk <= self.limits.max_topk:
            raise ServiceError(400, f"topk must be in 1..{self.limits.max_topk}, got {topk}")
        self.refresh()
        query = {"id": None, "pid": query_pid, "camid": query_camid}
        if entry_id is not None:
            entry = self._entry(entry_id)
            query = {"id": entry.id, "pid": entry.pid, "camid": entry.camid, "path": entry.path}
            qf = self.index.features([entry_id])
        else:
            qf = self.embedder.embed([image])
        if exclude_own_camera and query["camid"] is None:
            raise ServiceError(400, "exclude_own_camera needs the query's camera: give 'camid' with the upload")
        result = self._ranked(qf, topk + (entry_id is not None), rerank, camids, exclude_camids,
                              [query["camid"]] if exclude_own_camera else None)
        hits = [(e, float(s)) for e, s in zip(result.metadata[0], result.scores[0]) if e.id != entry_id][:topk]
        return {"query": query, "score": SCORE_RERANKED if rerank else SCORE_COSINE,
                "matches": [self._match(rank, e, s, query["pid"]) for rank, (e, s) in enumerate(hits, start=1)]}

    def _ranked(self, qf: np.ndarray, topk: int, rerank: bool, camids, exclude_camids, query_camids):
        filters = dict(camids=camids, exclude_camids=exclude_camids, query_camids=query_camids)
        size = max(len(self.index), 1)
        try:
            if not rerank:
                return self.index.search(qf, topk=min(topk, size), **filters)
            result = self.index.search(qf, topk=min(max(topk, RERANK_CANDIDATES), size), **filters)
            return rerank_result(self.index, qf, result, topk=topk)
        except GalleryIndexError as err:
            raise ServiceError(400, str(err)) from None

    @staticmethod
    def _match(rank: int, entry, score: float, query_pid) -> dict:
        same = None if query_pid is None or entry.pid is None else bool(entry.pid == query_pid)
        return {"rank": rank, "id": entry.id, "score": score, "path": entry.path, "pid": entry.pid,
                "camid": entry.camid, "timestamp": entry.timestamp, "track_id": entry.track_id, "tag": entry.tag,
                "match": same}

    def browse(self, offset: int = 0, limit: int = 50, **filters) -> dict:
        """One page of entries in id order (``GET /gallery``).

        Args:
            offset: entries to skip (>= 0). limit: page size, 1 to ``max_page``.
            **filters: ``camids``, ``pid``, ``track_id``, ``tag``, ``since``, ``until`` (seconds)
                as in :meth:`reidkit.index.GalleryIndex.list_entries`.

        Raises:
            ServiceError: 400 a bad offset, limit or filter.
        """
        if offset < 0 or not 1 <= limit <= self.limits.max_page:
            raise ServiceError(400, f"offset must be >= 0 and limit in 1..{self.limits.max_page}, got {offset} and {limit}")
        self.refresh()
        try:
            page = self.index.list_entries(offset, limit, **filters)
        except GalleryIndexError as err:
            raise ServiceError(400, str(err)) from None
        return {"total": page.total, "offset": offset, "limit": limit, "entries": [e.as_dict() for e in page.entries]}

    def thumbnail(self, entry_id: int) -> bytes:
        """A JPEG thumbnail of an indexed entry's image, read from its stored path (``GET /thumb/{id}``).

        Raises:
            ServiceError: 404 an unknown id, or the image is no longer readable at its path.
        """
        with self._thumb_lock:
            if entry_id in self._thumbs:
                self._thumbs.move_to_end(entry_id)
                return self._thumbs[entry_id]
        entry = self._entry(entry_id)
        try:
            image = read_image(entry.path, max_pixels=self.limits.max_pixels)
        except ImageReadError as err:
            raise ServiceError(404, f"the image of id {entry_id} cannot be read at its indexed path: {err.reason}") from None
        image.thumbnail(self.limits.thumbnail_size)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._thumb_lock:  # ids are never reused, so a cached thumbnail stays right
            self._thumbs[entry_id] = data
            while len(self._thumbs) > 2048:
                self._thumbs.popitem(last=False)
        return data

    # ------------------------------------------------------------------ writing
    def add(self, uploads: Sequence[bytes], pid: int | None = None, camid: int | None = None,
            timestamp: float | None = None, track_id: int | None = None, tag: str | None = None) -> dict:
        """Embed and add uploaded images in one commit (``POST /gallery``, with ``--writable``).

        Every upload is decoded before anything is written; the images are stored as PNG under
        ``upload_dir`` with names the server chooses (the content's sha256); the entries are
        added in one :meth:`~reidkit.index.GalleryIndex.batch`, so a failure leaves the index
        as it was (and removes the files this call wrote).

        Args:
            uploads: the files' bytes. pid, camid, timestamp (seconds since the epoch), track_id,
                tag: metadata given to every added entry.

        Returns:
            ``{"ids": [...], "count": entries in the index}``.

        Raises:
            ServiceError: 403 not writable; 400 no file, too many, a bad image or metadata;
                413 a file too large; 409 another process is writing the index.
        """
        if not self.writable:
            raise ServiceError(403, "this service is read-only: start it with --writable to add images")
        if not uploads:
            raise ServiceError(400, "POST /gallery needs at least one image in 'files'")
        if len(uploads) > self.limits.max_files:
            raise ServiceError(400, f"{len(uploads)} files in one request; the limit is {self.limits.max_files}")
        images = [self.decode_upload(data, f"files[{i}]") for i, data in enumerate(uploads)]
        written: list[Path] = []
        try:
            paths = [self._store(image, data, written) for image, data in zip(images, uploads)]
            entries = [EntryMeta(path=str(p), pid=pid, camid=camid, timestamp=timestamp, track_id=track_id, tag=tag)
                       for p in paths]
            features = self.embedder.embed(images)
            with self.index.batch():
                ids = self.index.add(features, entries)
        except BaseException as err:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            if isinstance(err, IndexLockedError):
                raise ServiceError(409, f"the index is being written by another process: {err}") from None
            if isinstance(err, GalleryIndexError):
                raise ServiceError(400, str(err)) from None
            raise
        return {"ids": [int(i) for i in ids], "count": len(self.index)}

    def _store(self, image, data: bytes, written: list[Path]) -> Path:
        """Save a decoded upload as PNG under ``upload_dir`` (atomically); returns its path."""
        from ..fileio import atomic_write

        self.upload_dir.mkdir(parents=True, exist_ok=True)
        path = (self.upload_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.png").resolve()
        if not path.exists():
            atomic_write(path, lambda handle: image.save(handle, format="PNG"))
            written.append(path)
        return path


def model_card(manifest, cfg=None, source: dict | None = None) -> dict:
    """What the page shows about the model: name, weights, what it was trained and evaluated on.

    Args:
        manifest: the index's :class:`~reidkit.index.IndexManifest`.
        cfg: the :class:`~reidkit.engine.config.Config` the model was loaded with.
        source: the manifest's ``model_source`` (``{"checkpoint": ...}`` or ``{"model": ...,
            "pretrained": ...}``).

    Returns:
        ``{"model", "weights", "input_size", "trained_on", "evaluation"}``. ``trained_on`` is the
        checkpoint's ``data.name`` (``None`` for a registered model or an ONNX file: not known);
        ``evaluation`` is ``{"rank1", "mAP", "dataset", "file"}`` from the ``eval.json`` or
        ``results.json`` beside a checkpoint, or ``None`` when there is none.
    """
    from ..report import results_beside

    source = source or {}
    card = {"model": manifest.model_name, "weights": manifest.model_sha256[:12], "input_size": list(manifest.input_size),
            "trained_on": None, "evaluation": None}
    if "checkpoint" in source:
        card["trained_on"] = cfg.data.name if cfg is not None else None
        found = results_beside(source["checkpoint"])
        if found:
            m = found["metrics"]
            card["evaluation"] = {"rank1": m.get("rank1"), "mAP": m.get("mAP"),
                                  "dataset": found.get("dataset") or (cfg.data.eval_name or cfg.data.name if cfg else None),
                                  "file": Path(found["file"]).name}
    elif source.get("pretrained"):
        card["weights_file"] = Path(source["pretrained"]).name
    return card


__all__ = ["SCORE_COSINE", "SCORE_RERANKED", "SearchService", "ServiceError", "ServiceLimits", "model_card"]
