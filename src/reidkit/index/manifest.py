"""The index manifest: which model made the embeddings, and the committed state of the folder.

``manifest.json`` is the commit point of every write (see :mod:`reidkit.index.gallery`): it names
the current generation, the faiss file of that generation, the number of entries and the next
free id. It is replaced atomically, so a reader always finds a complete one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GalleryIndexError, ModelMismatchError

FORMAT = "reidkit-gallery-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VECTORS_NAME = "vectors.f32"
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def model_fingerprint(model: Any) -> str:
    """sha256 that identifies a model's weights.

    Args:
        model: a ``torch.nn.Module`` (its ``state_dict()`` is hashed: for every key in order, the
            key, dtype, shape and the raw bytes of the tensor on CPU, so device and memory format
            do not matter), or the path of a weights file such as an ONNX model (the file's bytes
            are hashed).

    Returns:
        64 lowercase hexadecimal digits.

    Raises:
        GalleryIndexError: the path does not exist.
        TypeError: ``model`` is neither a module nor a path.
    """
    if isinstance(model, (str, os.PathLike)):
        return _file_sha256(Path(model))
    import torch  # only needed for modules; the index itself does not import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fingerprint expects a torch.nn.Module or a file path, got {type(model).__name__}")
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    if not path.is_file():
        raise GalleryIndexError(f"model file {str(path)!r} does not exist")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IndexManifest:
    """What produced an index's embeddings: the model and its preprocessing.

    Attributes:
        model_name: registered model name or file name (e.g. ``"osnet_x1_0"``, ``"model.onnx"``).
        model_sha256: :func:`model_fingerprint` of the weights.
        input_size: ``(H, W)`` in pixels the crops were resized to.
        normalized: the index L2-normalises every added vector and every query, so scores are
            cosine similarities in [-1, 1] (larger is closer). ``False`` keeps vectors as given and
            scores are raw inner products (larger is closer).
        flip: embeddings are the mean of each image's and its mirror image's (flip test-time
            augmentation); queries must be embedded the same way.
        model_source: where the model can be loaded from again, as string keys and values chosen
            by the caller (e.g. ``{"checkpoint": "/abs/last.pt"}`` or ``{"model": "osnet_x1_0",
            "pretrained": "/abs/w.pth"}``), so that adding images or searching needs no model
            argument; the weights found there should be checked against ``model_sha256``.
            Not compared by :meth:`check_compatible` (files move).
    """

    model_name: str
    model_sha256: str
    input_size: tuple[int, int]
    normalized: bool = True
    flip: bool = False
    model_source: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise GalleryIndexError(f"model_name must be a non-empty string, got {self.model_name!r}")
        if not isinstance(self.model_sha256, str) or not _HEX64.match(self.model_sha256):
            raise GalleryIndexError(f"model_sha256 must be 64 lowercase hex digits, got {self.model_sha256!r}")
        size = tuple(self.input_size) if isinstance(self.input_size, (list, tuple)) else ()
        if len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            raise GalleryIndexError(f"input_size must be (H, W) positive integers, got {self.input_size!r}")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        for name in ("normalized", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise GalleryIndexError(f"{name} must be a bool, got {getattr(self, name)!r}")
        source = self.model_source
        if source is not None and not (
            isinstance(source, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in source.items())
        ):
            raise GalleryIndexError(f"model_source must be a dict of strings or None, got {source!r}")
        if source is not None:
            object.__setattr__(self, "model_source", dict(source))

    @classmethod
    def for_model(
        cls,
        model: Any,
        model_name: str,
        input_size: tuple[int, int],
        *,
        normalized: bool = True,
        flip: bool = False,
        model_source: dict[str, str] | None = None,
    ) -> IndexManifest:
        """The manifest of ``model`` (a module or a weights file), hashing it with :func:`model_fingerprint`."""
        return cls(model_name, model_fingerprint(model), tuple(input_size), normalized, flip, model_source)

    def describe(self) -> str:
        """``"name (first 12 hex of sha256)"``, as error messages show a model."""
        return f"{self.model_name} ({self.model_sha256[:12]})"

    def check_compatible(self, expected: IndexManifest, folder: Path) -> None:
        """Raise :class:`ModelMismatchError` naming both sides if ``expected`` differs from this one.

        The weights (sha256), input size, flip and normalisation must agree; the model name alone
        may differ (a renamed file with the same weights is the same model).
        """
        diffs = []
        if self.model_sha256 != expected.model_sha256:
            diffs.append(f"built with model {self.describe()}, opened with model {expected.describe()}")
        for name in ("input_size", "flip", "normalized"):
            built, given = getattr(self, name), getattr(expected, name)
            if built != given:
                diffs.append(f"built with {name}={built}, opened with {name}={given}")
        if diffs:
            raise ModelMismatchError(
                f"index {str(folder)!r}: " + "; ".join(diffs) + " (pass force=True to open it anyway)"
            )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "input_size": list(self.input_size)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class IndexState:
    """The committed state of an index folder, as ``manifest.json`` holds it.

    Attributes:
        dim: embedding dimension D.
        kind: ``"flat"``, ``"ivf"``, ``"ivfpq"`` or ``"hnsw"``.
        params: the kind's build and default search parameters (see :mod:`reidkit.index.backends`).
        manifest: the model that made the embeddings.
        generation: increases by one with every committed write; 0 for a new index.
        count: number of live entries.
        next_id: the id the next added entry gets (ids are never reused); also the number of rows
            in the vectors file that are committed.
        trained: whether the faiss index is trained (always true for ``flat`` and ``hnsw``).
        faiss_file: name of this generation's faiss file in the folder; ``None`` for ``flat``,
            whose faiss index is rebuilt from the vectors file on open.
        faiss_bytes: size of ``faiss_file`` in bytes (checked on open).
        faiss_crc32: CRC-32 (``zlib.crc32``) of ``faiss_file`` as committed (checked on open);
            ``None`` when there is no faiss file, or for an index written before reidkit
            recorded checksums (its checks are skipped until a write records them).
        vectors_crc32: CRC-32 of the first ``next_id`` rows of the vectors file, extended by
            each commit's new rows (``zlib.crc32(new_rows, previous)``), so rows a killed writer
            left past ``next_id`` are outside it (checked on open for ``flat``, by
            :meth:`GalleryIndex.verify` for all kinds); ``None`` as for ``faiss_crc32``.
        reidkit_version: version of reidkit that wrote the last generation.
        created: ISO 8601 UTC time the index was created.
        updated: ISO 8601 UTC time of the last committed write.
    """

    dim: int
    kind: str
    params: dict
    manifest: IndexManifest
    generation: int = 0
    count: int = 0
    next_id: int = 0
    trained: bool = True
    faiss_file: str | None = None
    faiss_bytes: int | None = None
    faiss_crc32: int | None = None
    vectors_crc32: int | None = None
    reidkit_version: str = ""
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)

    def replace(self, **changes: Any) -> IndexState:
        return dataclasses.replace(self, **changes)

    def unchecked_files(self) -> list[str]:
        """Files of this state whose checksum the manifest does not record (an index written
        before reidkit recorded checksums): their integrity checks are skipped."""
        names = [] if self.vectors_crc32 is not None else [VECTORS_NAME]
        return names + ([self.faiss_file] if self.faiss_file and self.faiss_crc32 is None else [])

    def to_json(self) -> str:
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        body["manifest"] = self.manifest.to_dict()
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> IndexState:
        """Read and validate ``manifest.json``.

        Raises:
            GalleryIndexError: unreadable, not JSON, not a reidkit index manifest, a newer format,
                or a key missing or of the wrong type (the message names the file and the key).
        """
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GalleryIndexError(f"corrupt index manifest {str(path)!r}: {err}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise GalleryIndexError(f"{str(path)!r} is not a reidkit gallery index manifest (no format={FORMAT!r})")
        if body.get("format_version") != FORMAT_VERSION:
            raise GalleryIndexError(
                f"index manifest {str(path)!r} has format_version {body.get('format_version')!r}; "
                f"this reidkit reads version {FORMAT_VERSION}"
            )
        try:
            return _state_from_dict(body, path)
        except GalleryIndexError as err:
            raise GalleryIndexError(f"corrupt index manifest {str(path)!r}: {err}") from None


_FIELD_CHECKS = {
    "dim": lambda v: _is_int(v) and v > 0,
    "kind": lambda v: v in KINDS,
    "params": lambda v: isinstance(v, dict),
    "generation": lambda v: _is_int(v) and v >= 0,
    "count": lambda v: _is_int(v) and v >= 0,
    "next_id": lambda v: _is_int(v) and v >= 0,
    "trained": lambda v: isinstance(v, bool),
    "faiss_file": lambda v: v is None or (isinstance(v, str) and "/" not in v and v.startswith("faiss-")),
    "faiss_bytes": lambda v: v is None or (_is_int(v) and v >= 0),
    "faiss_crc32": lambda v: v is None or (_is_int(v) and 0 <= v < 2**32),
    "vectors_crc32": lambda v: v is None or (_is_int(v) and 0 <= v < 2**32),
    "reidkit_version": lambda v: isinstance(v, str),
    "created": lambda v: isinstance(v, str),
    "updated": lambda v: isinstance(v, str),
}


_OPTIONAL = ("faiss_crc32", "vectors_crc32")  # absent from manifests written before checksums


def _state_from_dict(body: dict, path: Path) -> IndexState:
    values = {}
    for key, ok in _FIELD_CHECKS.items():
        if key in _OPTIONAL and key not in body:
            continue  # written before the key existed: the default (None) holds
        if key not in body:
            raise GalleryIndexError(f"key {key!r} is missing")
        if not ok(body[key]):
            raise GalleryIndexError(f"key {key!r} has an invalid value {body[key]!r}")
        values[key] = body[key]
    model = body.get("manifest")
    if not isinstance(model, dict):
        raise GalleryIndexError("key 'manifest' is missing or not an object")
    try:
        values["manifest"] = IndexManifest(**model)
    except TypeError as err:
        raise GalleryIndexError(f"key 'manifest': {err}") from None
    if values["count"] > values["next_id"]:
        raise GalleryIndexError(f"count {values['count']} exceeds next_id {values['next_id']}")
    return IndexState(**values)


@dataclass(frozen=True)
class IndexInfo:
    """What :meth:`GalleryIndex.info` reports.

    Attributes:
        folder: the index folder.
        state: the committed :class:`IndexState` (dim, kind, params, model manifest, count, ...).
        disk_bytes: total size of the files in the folder, in bytes.
        vector_bytes: size of the raw vectors file, in bytes (includes removed entries' rows).
        faiss_ntotal: vectors held by the faiss index; more than ``count`` only for ``hnsw``
            with removed entries not yet dropped by :meth:`GalleryIndex.rebuild`.
        device: where searches run: ``"cpu"`` or ``"cuda"`` (faiss GPU).

    ``as_dict()["integrity"]`` says whether the manifest records the files' checksums (and so
    whether opening checks them).
    """

    folder: Path
    state: IndexState
    disk_bytes: int
    vector_bytes: int
    faiss_ntotal: int
    device: str

    def as_dict(self) -> dict:
        """JSON-ready dictionary (for ``reidkit index info``)."""
        body = json.loads(self.state.to_json())
        body.update(folder=str(self.folder), disk_bytes=self.disk_bytes, vector_bytes=self.vector_bytes,
                    faiss_ntotal=self.faiss_ntotal, device=self.device, integrity=self.integrity())
        return body

    def integrity(self) -> str:
        """One line: which files' checksums the manifest records, and so what open checks."""
        unchecked = self.state.unchecked_files()
        if not unchecked:
            return "checksums recorded for every data file; open checks the files it loads"
        return (f"no checksum recorded for {', '.join(unchecked)} (written before reidkit recorded "
                "checksums): their integrity checks are skipped until the next write records them")
