"""GalleryIndex: exact search equals brute force, stable ids, metadata, filters, batches."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from index_testlib import brute_force_topk, clustered_features, entries_for  # noqa: E402

from reidkit.index import EntryMeta, GalleryIndex, GalleryIndexError, IndexManifest  # noqa: E402

DIM = 32


@pytest.fixture
def flat(tmp_path, manifest):
    index = GalleryIndex.create(tmp_path / "idx", DIM, manifest)
    x = clustered_features(600, DIM, seed=1)
    index.add(x, entries_for(600))
    yield index, x
    index.close()


def test_flat_search_equals_brute_force_single_and_batched(flat):
    index, x = flat
    queries = clustered_features(50, DIM, seed=2)
    ref_ids, ref_scores = brute_force_topk(queries, x, np.arange(len(x)), k=10)
    gaps = np.diff(np.sort(queries @ x.T, axis=1)[:, -11:], axis=1)
    assert gaps.min() > 1e-6  # no near-ties: the exact order is well defined
    batched = index.search(queries, topk=10)
    np.testing.assert_array_equal(batched.ids, ref_ids)
    np.testing.assert_allclose(batched.scores, ref_scores, atol=1e-5)
    for q in range(0, 50, 7):
        single = index.search(queries[q : q + 1], topk=10)
        np.testing.assert_array_equal(single.ids[0], ref_ids[q])
    assert batched.ids.dtype == np.int64 and batched.scores.dtype == np.float32
    assert [e.id for e in batched.metadata[3]] == ref_ids[3].tolist()
    assert batched.metadata[3][0].path == f"img/{ref_ids[3][0]:06d}.jpg"


def test_queries_and_features_are_l2_normalised(flat):
    index, x = flat
    scaled = index.search(x[:5] * 7.5, topk=3)
    np.testing.assert_array_equal(scaled.ids[:, 0], np.arange(5))
    np.testing.assert_allclose(scaled.scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(index.features([3, 1]), x[[3, 1]], atol=1e-6)


def test_unnormalised_index_keeps_raw_inner_products(tmp_path):
    manifest = IndexManifest("m", "a" * 64, (8, 4), normalized=False)
    index = GalleryIndex.create(tmp_path / "raw", 4, manifest)
    gallery = np.array([[2, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32)
    index.add(gallery, entries_for(3))
    result = index.search(np.array([[1, 1.5, 0, 0]], dtype=np.float32), topk=3)
    np.testing.assert_array_equal(result.ids[0], [2, 0, 1])
    np.testing.assert_allclose(result.scores[0], [2.5, 2, 1.5])


def test_ids_are_stable_and_never_reused(flat):
    index, x = flat
    index.remove([5, 17, 599])
    assert len(index) == 597
    with pytest.raises(GalleryIndexError, match="599"):
        index.get([599])
    new = index.add(x[:2], entries_for(2, start=600))
    np.testing.assert_array_equal(new, [600, 601])
    keep = np.setdiff1d(np.arange(600), [5, 17, 599])
    gallery = np.concatenate([x[keep], x[:2]])
    ids = np.concatenate([keep, new])
    queries = clustered_features(20, DIM, seed=3)
    ref_ids, _ = brute_force_topk(queries, gallery, ids, k=8)
    np.testing.assert_array_equal(index.search(queries, topk=8).ids, ref_ids)
    assert index.get([600])[0].path == "img/000600.jpg"
    assert index.get([4])[0].path == "img/000004.jpg"  # not renumbered


def test_reopen_sees_the_same_index(flat, tmp_path, manifest):
    index, x = flat
    index.remove([0, 1])
    queries = clustered_features(10, DIM, seed=4)
    before = index.search(queries, topk=5)
    reopened = GalleryIndex.open(tmp_path / "idx", expect_model=manifest)
    after = reopened.search(queries, topk=5)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    info = reopened.info()
    assert (info.state.count, info.state.next_id, info.state.generation, info.faiss_ntotal) == (598, 600, 2, 598)
    assert info.vector_bytes == 600 * DIM * 4
    assert info.as_dict()["manifest"]["model_name"] == "test_model"


def test_manifest_round_trips_with_the_model_source(tmp_path):
    manifest = IndexManifest("osnet_x1_0", "c" * 64, (256, 128), flip=True, model_source={"checkpoint": "/runs/x/last.pt"})
    GalleryIndex.create(tmp_path / "s", DIM, manifest).close()
    assert GalleryIndex.open(tmp_path / "s").manifest == manifest


def test_metadata_round_trip_with_missing_fields(tmp_path, manifest):
    index = GalleryIndex.create(tmp_path / "m", DIM, manifest)
    given = [EntryMeta(path="a.png"), EntryMeta(path="b.png", pid=3, camid=-1, timestamp=1.5e9, track_id=9, tag="cam-x"),
             {"path": "c.png", "camid": 2}]
    ids = index.add(clustered_features(3, DIM), given)
    got = GalleryIndex.open(tmp_path / "m").get(ids[::-1])
    assert [e.id for e in got] == [2, 1, 0]
    assert got[2].path == "a.png" and got[2].pid is None and got[2].timestamp is None and got[2].tag is None
    assert (got[1].pid, got[1].camid, got[1].timestamp, got[1].track_id, got[1].tag) == (3, -1, 1.5e9, 9, "cam-x")
    assert got[0].camid == 2 and got[0].as_dict()["path"] == "c.png"


def _filtered_reference(queries, x, allowed_per_query, k):
    """Brute force over the allowed gallery rows of each query."""
    out = []
    for q, allowed in zip(queries, allowed_per_query):
        ids = np.flatnonzero(allowed)
        ref, _ = brute_force_topk(q[None], x[ids], ids, k)
        out.append(ref[0])
    return out


def test_camera_filters_equal_filtered_brute_force(flat):
    index, x = flat
    cams = np.arange(600) % 3
    queries = clustered_features(12, DIM, seed=5)
    q_cams = np.arange(12) % 3
    cases = [
        (dict(camids=[1]), [cams == 1] * 12),
        (dict(camids=2), [cams == 2] * 12),
        (dict(exclude_camids={0, 2}), [cams == 1] * 12),
        (dict(query_camids=q_cams), [cams != c for c in q_cams]),
        (dict(query_camids=q_cams, exclude_camids=[2]), [(cams != c) & (cams != 2) for c in q_cams]),
    ]
    for kwargs, allowed in cases:
        result = index.search(queries, topk=6, **kwargs)
        for got, ref in zip(result.ids, _filtered_reference(queries, x, allowed, 6)):
            np.testing.assert_array_equal(got, ref)
        assert all(e.camid in np.flatnonzero(a) % 3 for row, a in zip(result.metadata, allowed) for e in row)


def test_fewer_matches_than_topk_are_padded(flat):
    index, _ = flat
    index.remove(np.arange(0, 597))
    result = index.search(clustered_features(2, DIM), topk=5)
    assert (result.ids[:, :3] >= 597).all() and (result.ids[:, 3:] == -1).all()
    assert np.isneginf(result.scores[:, 3:]).all() and all(len(m) == 3 for m in result.metadata)
    none = index.search(clustered_features(2, DIM), topk=4, camids=[99])
    assert (none.ids == -1).all() and none.metadata == [[], []]


def test_empty_index_returns_no_hits(tmp_path, manifest):
    index = GalleryIndex.create(tmp_path / "e", DIM, manifest)
    result = index.search(clustered_features(3, DIM), topk=2)
    assert result.ids.shape == (3, 2) and (result.ids == -1).all()
    assert len(index) == 0 and index.list_entries().total == 0


def test_list_entries_pages_and_filters_like_python(flat):
    index, _ = flat
    index.remove([1, 4, 7])
    everything = [e for e in entries_for(600) if int(e.path[4:10]) not in (1, 4, 7)]
    ids_all = [i for i in range(600) if i not in (1, 4, 7)]
    page = index.list_entries(offset=10, limit=20, camids=[1])
    ref = [i for i, e in zip(ids_all, everything) if e.camid == 1]
    assert [e.id for e in page.entries] == ref[10:30] and page.total == len(ref)
    page = index.list_entries(limit=500, tag="a", since=1100.0, until=1200.0)
    ref = [i for i, e in zip(ids_all, everything) if e.tag == "a" and 1100 <= e.timestamp <= 1200]
    assert [e.id for e in page.entries] == ref and page.total == len(ref)
    assert [e.id for e in index.list_entries(limit=10, pid=3).entries] == [12, 13, 14, 15]
    assert [e.id for e in index.list_entries(limit=10, track_id=2).entries] == [5]
    with pytest.raises(GalleryIndexError, match="limit"):
        index.list_entries(limit=0)


def test_batch_commits_one_generation(flat):
    index, x = flat
    gen = index.generation
    with index.batch():
        ids = index.add(x[:3], entries_for(3, start=600))
        index.remove([ids[0], 10])
        assert len(index) == 601 and index.search(x[1:2], topk=1).ids[0, 0] in (1, 601)
    assert index.generation == gen + 1 and len(index) == 601
    assert index.get([601])[0].path == "img/000601.jpg"


def test_failed_batch_leaves_the_index_unchanged(flat, tmp_path):
    index, x = flat
    before = index.search(x[:4], topk=5)
    with pytest.raises(RuntimeError, match="boom"):
        with index.batch():
            index.add(x[:3], entries_for(3, start=600))
            index.remove([0, 1])
            raise RuntimeError("boom")
    assert len(index) == 600 and index.generation == 1
    np.testing.assert_array_equal(index.search(x[:4], topk=5).ids, before.ids)
    reopened = GalleryIndex.open(tmp_path / "idx")
    assert len(reopened) == 600 and reopened.list_entries(limit=1, offset=599).entries[0].id == 599
    assert index.add(x[:1], entries_for(1))[0] == 600  # the aborted ids were never committed


def test_rescored_reorders_candidates(flat):
    index, x = flat
    result = index.search(x[:3], topk=5)
    reversed_scores = -result.scores  # e.g. the negated distance of a re-ranking
    again = result.rescored(reversed_scores, topk=4)
    np.testing.assert_array_equal(again.ids, result.ids[:, ::-1][:, :4])
    assert [e.id for e in again.metadata[0]] == again.ids[0].tolist()
    with pytest.raises(GalleryIndexError, match="shape"):
        result.rescored(np.zeros((3, 4)))


def test_query_expansion_on_retrieved_candidates(flat):
    """Alpha query expansion with the stored features of the retrieved candidates (plain numpy)."""
    index, x = flat
    q = x[:4]
    first = index.search(q, topk=3)
    expanded = np.stack([q[i] + (first.scores[i, :, None] ** 3 * index.features(first.ids[i])).sum(0) for i in range(4)])
    second = index.search(expanded, topk=3)
    ref_ids, _ = brute_force_topk(expanded / np.linalg.norm(expanded, axis=1, keepdims=True), x, np.arange(600), 3)
    np.testing.assert_array_equal(second.ids, ref_ids)


def test_reader_refresh_sees_another_writers_commits(flat, tmp_path):
    index, x = flat
    reader = GalleryIndex.open(tmp_path / "idx")
    index.add(x[:5], entries_for(5, start=600))
    index.remove([0])
    assert len(reader) == 600 and reader.search(x[:1], topk=1).ids[0, 0] == 0  # old snapshot
    assert reader.refresh() and len(reader) == 604 and reader.generation == 3
    np.testing.assert_array_equal(reader.search(x[:3], topk=4).ids, index.search(x[:3], topk=4).ids)
    assert not reader.refresh()
    reader.add(x[5:6], entries_for(1, start=605))  # the reader may write too: it catches up first
    assert index.refresh() and len(index) == 605
