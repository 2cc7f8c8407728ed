"""Damaged files are found: open checks what it loads, verify() checks everything; one-line errors.

Each test damages a copy of a small index the way bit rot or a careless edit would (64 bytes
flipped in the middle of a file, a manifest value changed) and expects one GalleryIndexError
line naming the damaged file. Indexes written before checksums existed still open.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from index_testlib import MANIFEST, clustered_features, entries_for  # noqa: E402

from reidkit.index import GalleryIndex, GalleryIndexError  # noqa: E402

DIM = 16
PARAMS = {"flat": {}, "hnsw": {"M": 8}, "ivf": {"nlist": 4}, "ivfpq": {"nlist": 4, "m": 4, "nbits": 4}}


def _build(folder: Path, kind: str, n: int = 200) -> Path:
    with GalleryIndex.create(folder, DIM, MANIFEST, kind=kind, **PARAMS[kind]) as index:
        index.add(clustered_features(n, DIM), entries_for(n))
        index.remove([3, 4])
    return folder


def _flip_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = bytes(b ^ 0xFF for b in data[mid : mid + count])
    path.write_bytes(bytes(data))


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    body = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    path.write_text(json.dumps(body))


def _one_line_error(call, culprit: str) -> str:
    with pytest.raises(GalleryIndexError) as err:
        call()
    text = str(err.value)
    assert len(text.splitlines()) == 1 and culprit in text, text
    return text


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_a_sound_index_verifies(tmp_path, kind):
    with GalleryIndex.open(_build(tmp_path / "idx", kind)) as index:
        report = index.verify()
        assert report.skipped == [] and report.notes == []
        assert any(line.startswith("vectors.f32: 200 rows") for line in report.checked), report.checked
        assert any("integrity_check ok, 198 live entries" in line for line in report.checked)
        assert len(report.checked) == (3 if kind == "flat" else 4)
        assert "checksums recorded" in index.info().as_dict()["integrity"]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_corrupt_faiss_file_fails_open_naming_it(tmp_path, kind):
    folder = _build(tmp_path / "idx", kind)
    faiss_file = next(folder.glob("faiss-*.index"))
    _flip_bytes(faiss_file)
    text = _one_line_error(lambda: GalleryIndex.open(folder), faiss_file.name)
    assert "is corrupt: crc32" in text


def test_corrupt_vectors_fail_open_of_flat_and_verify_of_the_others(tmp_path):
    flat = _build(tmp_path / "flat", "flat")
    _flip_bytes(flat / "vectors.f32")
    _one_line_error(lambda: GalleryIndex.open(flat), "vectors.f32")
    hnsw = _build(tmp_path / "hnsw", "hnsw")
    _flip_bytes(hnsw / "vectors.f32")
    with GalleryIndex.open(hnsw) as index:  # hnsw does not read the vectors on open
        text = _one_line_error(index.verify, "vectors.f32")
    assert "failed verification" in text and "is corrupt" in text


def test_corrupt_sqlite_fails_verify_naming_it(tmp_path):
    folder = _build(tmp_path / "idx", "flat", n=3000)  # several pages of entries
    _flip_bytes(folder / "meta.sqlite", count=256)

    def open_and_verify():
        with GalleryIndex.open(folder) as index:
            index.verify()

    _one_line_error(open_and_verify, "meta.sqlite")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_edited_dimension_is_refused(tmp_path, kind):
    folder = _build(tmp_path / "idx", kind)
    _edit_manifest(folder, dim=DIM // 2)  # the vectors file still holds enough bytes
    culprit = "vectors.f32" if kind == "flat" else "holds 16-d vectors, manifest.json says dim 8"
    _one_line_error(lambda: GalleryIndex.open(folder), culprit)


def test_old_manifest_without_checksums_opens_and_the_next_write_records_them(tmp_path):
    folder = _build(tmp_path / "idx", "hnsw")
    _edit_manifest(folder, faiss_crc32=None, vectors_crc32=None)
    with GalleryIndex.open(folder) as index:
        assert len(index) == 198
        assert "no checksum recorded for vectors.f32, faiss-" in index.info().as_dict()["integrity"]
        report = index.verify()
        assert len(report.skipped) == 2 and all("no checksum recorded" in line for line in report.skipped)
        index.add(clustered_features(5, DIM, seed=1), entries_for(5, start=200))
    with GalleryIndex.open(folder) as index:
        assert index.verify().skipped == []
        state = index.info().state
    rows = np.fromfile(folder / "vectors.f32", np.float32)
    assert state.vectors_crc32 == zlib.crc32(rows) and state.next_id == 205


def test_running_checksum_survives_failed_writes_and_leftover_rows(tmp_path):
    folder = _build(tmp_path / "idx", "flat")
    with GalleryIndex.open(folder) as index:
        with pytest.raises(RuntimeError, match="stop"):
            with index.batch():
                index.add(clustered_features(7, DIM, seed=2), entries_for(7, start=200))
                raise RuntimeError("stop")  # the batch is abandoned after its rows were written
    with open(folder / "vectors.f32", "ab") as handle:  # what a writer killed mid-append leaves
        handle.write(b"\x01" * 100)
    with GalleryIndex.open(folder) as index:
        assert any("100 bytes past the 200 committed rows" in note for note in index.verify().notes)
        index.add(clustered_features(3, DIM, seed=3), entries_for(3, start=200))
        assert index.verify().notes == []
    rows = (folder / "vectors.f32").read_bytes()
    assert len(rows) == 203 * DIM * 4
    assert json.loads((folder / "manifest.json").read_text())["vectors_crc32"] == zlib.crc32(rows)


def test_a_reader_checks_only_new_rows_on_refresh_and_catches_damage(tmp_path):
    folder = _build(tmp_path / "idx", "flat")
    reader = GalleryIndex.open(folder)
    with GalleryIndex.open(folder) as writer:
        writer.add(clustered_features(4, DIM, seed=4), entries_for(4, start=200))
    assert reader.refresh() and len(reader) == 202
    with GalleryIndex.open(folder) as writer:
        writer.add(clustered_features(4, DIM, seed=5), entries_for(4, start=204))
    with open(folder / "vectors.f32", "r+b") as handle:  # damage a row the second add wrote
        handle.seek(205 * DIM * 4)
        handle.write(b"\x00" * 16)
    _one_line_error(reader.refresh, "vectors.f32")
