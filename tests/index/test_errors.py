"""Bad input gets a clear GalleryIndexError naming what is wrong, and the folder stays untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")

from index_testlib import MANIFEST, clustered_features, entries_for, folder_snapshot  # noqa: E402

from reidkit.index import (  # noqa: E402
    EntryMeta,
    GalleryIndex,
    GalleryIndexError,
    IndexLockedError,
    IndexManifest,
    ModelMismatchError,
)

DIM = 16


@pytest.fixture
def built(tmp_path):
    folder = tmp_path / "idx"
    index = GalleryIndex.create(folder, DIM, MANIFEST, kind="hnsw", M=8)
    index.add(clustered_features(50, DIM), entries_for(50))
    index.close()
    return folder


def test_missing_and_foreign_folders(tmp_path):
    with pytest.raises(GalleryIndexError, match=r"index folder '.*nowhere' does not exist"):
        GalleryIndex.open(tmp_path / "nowhere")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"x")
    with pytest.raises(GalleryIndexError, match=r"'.*photos' is not a reidkit gallery index \(no manifest.json; it holds a.jpg\)"):
        GalleryIndex.open(foreign)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryIndexError, match="it is empty"):
        GalleryIndex.open(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalleryIndexError, match="is not a folder"):
        GalleryIndex.open(tmp_path / "file")
    assert [p.name for p in foreign.iterdir()] == ["a.jpg"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: "{not json", "corrupt index manifest"),
        (lambda m: json.dumps({**m, "format": "other"}), "is not a reidkit gallery index manifest"),
        (lambda m: json.dumps({**m, "format_version": 99}), "format_version 99"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "dim"}), "key 'dim' is missing"),
        (lambda m: json.dumps({**m, "dim": "sixteen"}), "key 'dim' has an invalid value 'sixteen'"),
        (lambda m: json.dumps({**m, "kind": "lsh"}), "key 'kind' has an invalid value 'lsh'"),
        (lambda m: json.dumps({**m, "faiss_file": "../x"}), "key 'faiss_file'"),
        (lambda m: json.dumps({**m, "manifest": {**m["manifest"], "model_sha256": "xyz"}}), "model_sha256"),
        (lambda m: json.dumps({**m, "count": 49}), "inconsistent: meta.sqlite holds 50 entries, manifest.json 49"),
    ],
)
def test_corrupt_manifest(built, damage, message):
    path = built / "manifest.json"
    path.write_text(damage(json.loads(path.read_text())))
    before = folder_snapshot(built)
    with pytest.raises(GalleryIndexError, match=message):
        GalleryIndex.open(built)
    assert folder_snapshot(built) == before


def test_missing_or_damaged_files(built, tmp_path):
    faiss_file = next(built.glob("faiss-*.index"))
    for damage, message in [
        (lambda f: (f / faiss_file.name).write_bytes(b"garbage"), "missing or of the wrong size"),
        (lambda f: (f / "meta.sqlite").unlink(), "has no meta.sqlite"),
        (lambda f: (f / "meta.sqlite").write_bytes(b"not a database" * 100), "not a usable index database"),
        (lambda f: (f / "vectors.f32").write_bytes(b""), "holds 0 vectors; the manifest commits 50"),
    ]:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(built, copy)
        for side in copy.glob("meta.sqlite-*"):
            side.unlink()
        damage(copy)
        with pytest.raises(GalleryIndexError, match=message):
            GalleryIndex.open(copy)


def test_bad_features_and_queries_leave_the_folder_untouched(built):
    index = GalleryIndex.open(built)
    before = folder_snapshot(built)
    good = clustered_features(3, DIM)
    nan = good.copy()
    nan[1, 4] = np.nan
    cases = [
        (lambda: index.add(clustered_features(3, DIM + 1), entries_for(3)), rf"dimension 17; index .* of test_model \({MANIFEST.model_sha256[:12]}\) holds 16-d embeddings"),
        (lambda: index.add(np.zeros((0, DIM), np.float32), []), "features is empty"),
        (lambda: index.add(nan, entries_for(3)), "features row 1 has NaN"),
        (lambda: index.add(np.zeros((1, DIM), np.float32), entries_for(1)), "row 0 is a zero vector"),
        (lambda: index.add(good[0], entries_for(1)), r"must be a \(N, D\) array; got shape \(16,\)"),
        (lambda: index.add(good, entries_for(2)), "2 entries given for 3 feature rows"),
        (lambda: index.add(good, ["a", "b", "c"]), r"entries\[0\] must be an EntryMeta"),
        (lambda: index.add(good[:1], [{"path": "a", "colour": 1}]), r"entries\[0\]:.*colour"),
        (lambda: index.search(np.zeros((0, DIM), np.float32)), "queries is empty"),
        (lambda: index.search([], topk=3), r"must be a \(N, D\) array"),
        (lambda: index.search(clustered_features(2, 8)), "queries have dimension 8"),
        (lambda: index.search(nan), "queries row 1 has NaN"),
        (lambda: index.search(good, topk=0), "topk must be a positive integer"),
        (lambda: index.search(good, query_camids=[1]), "query_camids has 1 values for 3 queries"),
        (lambda: index.remove([3, 777, 888]), r"id\(s\) 777, 888 not in index"),
        (lambda: index.remove([]), "no ids given"),
        (lambda: index.remove(["a"]), "ids must be a 1-D sequence of integers"),
        (lambda: index.get([51]), r"id\(s\) 51 not in index"),
        (lambda: index.features([-1]), r"id\(s\) -1 not in index"),
    ]
    for call, message in cases:
        with pytest.raises(GalleryIndexError, match=message):
            call()
    assert folder_snapshot(built) == before
    assert len(index) == 50 and len(GalleryIndex.open(built)) == 50


def test_bad_metadata_values():
    for kwargs, message in [
        (dict(path=""), "path must be a non-empty string"),
        (dict(path="a", pid=1.5), "pid must be an integer"),
        (dict(path="a", camid=True), "camid must be an integer"),
        (dict(path="a", timestamp=float("nan")), "timestamp must be finite"),
        (dict(path="a", tag=3), "tag must be a string"),
    ]:
        with pytest.raises(GalleryIndexError, match=message):
            EntryMeta(**kwargs)


def test_create_refuses_existing_content(built, tmp_path):
    before = folder_snapshot(built)
    with pytest.raises(GalleryIndexError, match="exists and is not an empty folder"):
        GalleryIndex.create(built, DIM, MANIFEST)
    assert folder_snapshot(built) == before
    (tmp_path / "empty").mkdir()
    assert len(GalleryIndex.create(tmp_path / "empty", DIM, MANIFEST)) == 0
    with pytest.raises(GalleryIndexError, match="dim must be a positive integer"):
        GalleryIndex.create(tmp_path / "x", 0, MANIFEST)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_model_mismatch_names_both_models_unless_forced(built):
    other = IndexManifest("osnet_x1_0", "b" * 64, (256, 128))
    with pytest.raises(ModelMismatchError) as err:
        GalleryIndex.open(built, expect_model=other)
    text = str(err.value)
    assert f"test_model ({MANIFEST.model_sha256[:12]})" in text and "osnet_x1_0 (bbbbbbbbbbbb)" in text
    assert "force=True" in text
    flipped = IndexManifest(MANIFEST.model_name, MANIFEST.model_sha256, (256, 128), flip=True)
    with pytest.raises(ModelMismatchError, match="built with flip=False, opened with flip=True"):
        GalleryIndex.open(built, expect_model=flipped)
    assert len(GalleryIndex.open(built, expect_model=other, force=True)) == 50
    assert len(GalleryIndex.open(built, expect_model=MANIFEST)) == 50


def test_a_second_writer_gets_a_clear_error(built):
    first = GalleryIndex.open(built)
    second = GalleryIndex.open(built, lock_timeout=0.2)
    with first.batch():
        first.add(clustered_features(2, DIM), entries_for(2, start=50))
        with pytest.raises(IndexLockedError, match=r"is being written by another process \(pid \d+\); gave up after 0.2 s"):
            second.add(clustered_features(1, DIM), entries_for(1))
        assert len(second.search(clustered_features(1, DIM), topk=60).metadata[0]) == 50  # readers are not blocked
    assert second.refresh() and len(second) == 52
    second.add(clustered_features(1, DIM), entries_for(1, start=52))
    assert len(GalleryIndex.open(built)) == 53


def test_a_write_failing_half_way_inside_a_batch_commits_nothing(built, monkeypatch):
    index = GalleryIndex.open(built)
    before = folder_snapshot(built)
    with pytest.raises(GalleryIndexError, match="failed half-way inside this batch; nothing was committed"):
        with index.batch():
            index.add(clustered_features(2, DIM), entries_for(2, start=50))
            monkeypatch.setattr(index._meta, "insert", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
            with pytest.raises(OSError, match="disk full"):
                index.add(clustered_features(2, DIM), entries_for(2, start=52))  # vectors and faiss touched
            monkeypatch.undo()
            with pytest.raises(GalleryIndexError, match="not in index"):
                index.remove([999])  # a write refused before it changes anything does not spoil the batch
    assert folder_snapshot(built) == before and len(index) == 50 and len(GalleryIndex.open(built)) == 50
