"""``reidkit serve`` endpoints through FastAPI's TestClient: results against a brute-force reference,
hostile inputs (always a clear 4xx JSON error, never a 500), the API key, writes that leave the
index intact when they fail, and the command line's bad flags."""

from __future__ import annotations

import io
import socket
import struct
import zlib

import numpy as np
import pytest
from serve_testlib import service_args
from PIL import Image

from reidkit.cli import main


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_bomb(width=30000, height=30000) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _query(serve_gallery, name="0005_c1_1.png") -> bytes:
    return (serve_gallery / name).read_bytes()


def _upload(client, data: bytes, **fields):
    return client.post("/search", files={"file": ("q.png", data, "image/png")}, data={k: str(v) for k, v in fields.items()})


# ---------------------------------------------------------------------------- results
def test_search_upload_matches_brute_force(client, service, serve_gallery):
    from reidkit.data import read_image

    response = _upload(client, _query(serve_gallery), topk=5, pid=5)
    assert response.status_code == 200
    body = response.json()
    matches = body["matches"]
    assert body["score"].startswith("cosine similarity, larger is closer") and len(matches) == 5
    index = service.index
    ids = index.list_entries(0, 1000).entries
    feats = index.features([e.id for e in ids])
    q = service.embedder.embed([read_image(str(serve_gallery / "0005_c1_1.png"))])[0]
    order = np.argsort(-(feats @ q), kind="stable")[:5]
    assert [m["id"] for m in matches] == [ids[i].id for i in order]
    np.testing.assert_allclose([m["score"] for m in matches], (feats @ q)[order], atol=1e-5)
    assert matches[0]["path"].endswith("0005_c1_1.png") and matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(m["match"] == (m["pid"] == 5) for m in matches)
    assert set(matches[0]) >= {"rank", "id", "score", "path", "pid", "camid", "timestamp", "track_id"}


def test_search_by_id_filters_and_rerank(client, service):
    entry = service.index.list_entries(0, 1, pid=4, camids=[0]).entries[0]
    body = client.post("/search", data={"id": entry.id, "topk": 6}).json()
    assert entry.id not in [m["id"] for m in body["matches"]] and body["query"]["pid"] == 4
    assert all(m["match"] == (m["pid"] == 4) for m in body["matches"])
    own = client.post("/search", data={"id": entry.id, "topk": 6, "exclude_own_camera": "true"}).json()["matches"]
    assert own and all(m["camid"] != 0 for m in own)
    only = client.post("/search", data={"id": entry.id, "topk": 6, "camids": "0"}).json()["matches"]
    assert only and all(m["camid"] == 0 for m in only)
    skip = client.post("/search", data={"id": entry.id, "topk": 6, "exclude_camids": "1, 0"}).json()["matches"]
    assert skip == []
    reranked = client.post("/search", data={"id": entry.id, "topk": 4, "rerank": "true"}).json()
    assert reranked["score"].startswith("negated") and len(reranked["matches"]) == 4


def test_browse_thumbnails_info_and_schema(client, service):
    page = client.get("/gallery", params={"offset": 2, "limit": 5}).json()
    everything = service.index.list_entries(0, 1000)
    assert page["total"] == len(everything.entries) == 24
    assert [e["id"] for e in page["entries"]] == [e.id for e in everything.entries[2:7]]
    cam1 = client.get("/gallery", params=[("camid", 1), ("pid", 6)]).json()
    assert cam1["total"] == 2 and all(e["camid"] == 1 and e["pid"] == 6 for e in cam1["entries"])
    thumb = client.get(f"/thumb/{page['entries'][0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 64)
    info = client.get("/info").json()
    assert info["index"] == {"count": 24, "dim": 512, "kind": "flat", "generation": 1, "normalized": True}
    card = info["card"]
    assert card["model"] == "osnet_x0_25" and card["trained_on"] == "synthetic"
    assert card["evaluation"]["file"] == "results.json" and 0 <= card["evaluation"]["mAP"] <= 1
    schema = client.get("/openapi.json").json()
    assert {"/search", "/gallery", "/thumb/{entry_id}", "/info", "/health"} <= set(schema["paths"])
    page_html = client.get("/")
    assert page_html.status_code == 200 and "app.js" in page_html.text and "http" not in page_html.text.split("<body>")[1]
    assert client.get("/static/app.js").status_code == 200 and client.get("/docs").status_code == 404  # no CDN page


# ---------------------------------------------------------------------------- hostile input
def _hostile_cases(serve_gallery):
    good = _query(serve_gallery)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(good)).save(jpeg, format="JPEG")
    huge = _png(Image.new("RGB", (1200, 1000)))  # 1.2 M pixels > the fixture's 1 M limit
    return [
        ("empty upload", dict(files={"file": ("q.png", b"", "image/png")}), 400, "empty"),
        ("not an image", dict(files={"file": ("q.png", b"GIF89a this is text", "image/png")}), 400, "not a readable image"),
        ("truncated PNG", dict(files={"file": ("q.png", good[: len(good) // 2], "image/png")}), 400, "truncated"),
        ("truncated JPEG", dict(files={"file": ("q.jpg", jpeg.getvalue()[:300], "image/jpeg")}), 400, "not a readable image"),
        ("too many pixels", dict(files={"file": ("q.png", huge, "image/png")}), 413, "limit"),
        ("decompression bomb", dict(files={"file": ("q.png", _png_bomb(), "image/png")}), 413, "limit"),
        ("too many bytes", dict(files={"file": ("q.png", good + b"\0" * 2**20, "image/png")}), 413, "limit"),
        ("traversal file name", dict(files={"file": ("../../etc/passwd", good, "image/png")}), 200, None),
        ("no query", dict(data={"topk": "3"}), 400, "either"),
        ("both queries", dict(files={"file": ("q.png", good, "image/png")}, data={"id": "0"}), 400, "either"),
        ("unknown id", dict(data={"id": "987654"}), 404, "987654"),
        ("traversal id", dict(data={"id": "../../etc/passwd"}), 422, "id"),
        ("negative id", dict(data={"id": "-3"}), 404, "-3"),
        ("topk 0", dict(data={"id": "0", "topk": "0"}), 400, "topk"),
        ("topk huge", dict(data={"id": "0", "topk": "100000"}), 400, "topk"),
        ("topk text", dict(data={"id": "0", "topk": "ten"}), 422, "topk"),
        ("bad camids", dict(data={"id": "0", "camids": "0;rm -rf"}), 400, "camids"),
        ("own camera unknown", dict(files={"file": ("q.png", good, "image/png")}, data={"exclude_own_camera": "true"}),
         400, "camid"),
        ("bad bool", dict(data={"id": "0", "rerank": "maybe"}), 422, "rerank"),
    ]


def test_hostile_searches_get_clear_4xx(client, serve_gallery):
    for name, request, status, words in _hostile_cases(serve_gallery):
        response = client.post("/search", **request)
        assert response.status_code == status, (name, response.text)
        if words:
            assert words in response.json()["error"], (name, response.text)
        assert "Traceback" not in response.text and "/tmp/reidkit-serve-" not in response.text, name


def test_body_limits_before_reading(client, serve_gallery):
    declared = client.post("/search", content=b"x" * 10, headers={"content-length": str(50 * 2**20),
                                                                   "content-type": "multipart/form-data; boundary=b"})
    assert declared.status_code == 413 and "limit" in declared.json()["error"]

    def stream():
        for _ in range(40):
            yield b"y" * 65536  # 2.5 MiB, chunked (no Content-Length)

    chunked = client.post("/search", content=stream(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    assert client.post("/search", content=b"{}", headers={"content-type": "application/json"}).status_code in (400, 422)


def test_paths_never_come_from_the_request(client):
    for url in ["/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/../../etc/passwd", "/thumb/%2Fetc%2Fpasswd", "/thumb/999999",
                "/thumb/-1", "/static/..%2F..%2Fservice.py", "/static/../app.py", "/static/%2e%2e/app.py"]:
        response = client.get(url)
        assert response.status_code in (404, 422), (url, response.status_code)
        assert b"def " not in response.content and b"root:" not in response.content, url
    assert client.get("/gallery", params={"tag": "../../etc/passwd"}).json()["total"] == 0  # only a filter value
    for params in [{"limit": 0}, {"limit": 100000}, {"offset": -1}, {"camid": "x"}, {"since": "yesterday"}]:
        response = client.get("/gallery", params=params)
        assert response.status_code == 422 and "error" in response.json(), params


def test_api_key(service, serve_gallery):
    from fastapi.testclient import TestClient

    from reidkit.serve import create_app

    with TestClient(create_app(service, api_key="s3cret")) as keyed:
        assert keyed.get("/health").status_code == 200 and keyed.get("/").status_code == 200
        for headers, words in [({}, "needs an API key"), ({"X-API-Key": "wrong"}, "wrong API key"),
                               ({"X-API-Key": "s3cret "}, "wrong"), ({"X-API-Key": "ß".encode("latin-1")}, "wrong")]:
            for method, url, kwargs in [("get", "/info", {}), ("get", "/gallery", {}), ("get", "/thumb/0", {}),
                                        ("post", "/search", {"data": {"id": "0"}})]:
                response = getattr(keyed, method)(url, headers=headers, **kwargs)
                assert response.status_code == 401 and words in response.json()["error"], (url, headers)
        ok = {"X-API-Key": "s3cret"}
        assert keyed.get("/info", headers=ok).status_code == 200
        assert keyed.post("/search", files={"file": ("q.png", _query(serve_gallery), "image/png")}, headers=ok).status_code == 200


# ---------------------------------------------------------------------------- writing
def test_add_commits_once_and_failed_adds_leave_the_index_intact(index_copy, serve_gallery, tmp_path):
    from fastapi.testclient import TestClient

    from reidkit.cli.serve import open_service
    from reidkit.index import GalleryIndex
    from reidkit.serve import create_app

    uploads = tmp_path / "uploads"
    svc = open_service(service_args(index_copy, writable=True, upload_dir=str(uploads)))
    try:
        with TestClient(create_app(svc)) as c:
            good = [("files", (f"{i}.png", _query(serve_gallery, f"000{p}_c2_1.png"), "image/png")) for i, p in enumerate((3, 4))]
            added = c.post("/gallery", files=good, data={"pid": "42", "camid": "7", "tag": "door"})
            assert added.status_code == 200, added.text
            ids = added.json()["ids"]
            assert len(ids) == 2 and added.json()["count"] == 26
            with GalleryIndex.open(index_copy) as reader:  # one commit, visible to another reader
                assert reader.generation == 2 and len(reader) == 26
                assert [e.pid for e in reader.get(ids)] == [42, 42]
            stored = sorted(uploads.iterdir())
            assert len(stored) == 2 and all(p.suffix == ".png" for p in stored)
            hit = c.post("/search", data={"id": ids[0], "topk": 1}).json()["matches"][0]
            assert hit["pid"] == 3 and hit["score"] == pytest.approx(1.0, abs=1e-4)  # the same picture, indexed before
            before = sorted(p.name for p in index_copy.iterdir())
            bad_batches = [
                good + [("files", ("x.png", b"not an image", "image/png"))],
                good + [("files", ("x.png", _png_bomb(), "image/png"))],
                good + [("files", ("x.png", b"", "image/png"))],
                [("files", (f"{i}.png", _query(serve_gallery), "image/png")) for i in range(17)],  # more than max_files
            ]
            for files in bad_batches:
                response = c.post("/gallery", files=files)
                assert 400 <= response.status_code < 500, response.text
            assert c.post("/gallery", files=good, data={"timestamp": "nan"}).status_code == 400
            assert c.post("/gallery", files=good, data={"pid": "x"}).status_code == 422
            assert c.post("/gallery").status_code == 422
            with GalleryIndex.open(index_copy) as reader:
                assert reader.generation == 2 and len(reader) == 26
            assert sorted(uploads.iterdir()) == stored and sorted(p.name for p in index_copy.iterdir()) == before
    finally:
        svc.close()


def test_read_only_service_refuses_adds_and_sees_other_writers(client, service, serve_gallery, index_copy):
    response = client.post("/gallery", files=[("files", ("a.png", _query(serve_gallery), "image/png"))])
    assert response.status_code == 403 and "--writable" in response.json()["error"]
    from fastapi.testclient import TestClient

    from reidkit.cli.serve import open_service
    from reidkit.index import EntryMeta, GalleryIndex
    from reidkit.serve import ServiceLimits, create_app

    svc = open_service(service_args(index_copy))
    svc.limits = ServiceLimits(max_upload_bytes=2**20, max_pixels=10**6, refresh_seconds=0.0)
    try:
        with TestClient(create_app(svc)) as c:
            assert c.get("/health").json()["count"] == 24
            with GalleryIndex.open(index_copy) as writer:
                writer.add(writer.features([0]), [EntryMeta(path=str(serve_gallery / "0003_c1_1.png"), pid=99)])
            assert c.get("/info").json()["index"]["count"] == 25
            assert c.get("/gallery", params={"pid": 99}).json()["total"] == 1
    finally:
        svc.close()


# ---------------------------------------------------------------------------- command line
def test_bad_serve_flags(serve_index, tmp_path, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    (tmp_path / "notdir").write_text("x")
    cases = [
        (["serve"], "--index"),
        (["serve", "--index", str(tmp_path / "nope")], "nope"),
        (["serve", "--index", str(tmp_path / "notdir")], "notdir"),
        (["serve", "--index", str(serve_index), "--port", "70000"], "70000"),
        (["serve", "--index", str(serve_index), "--port", "http"], "http"),
        (["serve", "--index", str(serve_index), "--port", port], port),
        (["serve", "--index", str(serve_index), "--port", "0", "--upload-dir", str(tmp_path)], "--writable"),
        (["serve", "--index", str(serve_index), "--port", "0", "--api-key", " "], "--api-key"),
        (["serve", "--index", str(serve_index), "--port", "0", "--max-upload-mb", "0"], "0"),
        (["serve", "--index", str(serve_index), "--port", "0", "--model", "osnet_x0_25"], "--force"),
        (["serve", "--index", str(serve_index), "--port", "0", "--checkpoint", str(tmp_path / "notdir")], "notdir"),
        (["serve", "--index", str(serve_index), "--host", "no-such-host.invalid", "--port", "0"], "no-such-host"),
    ]
    try:
        for argv, culprit in cases:
            assert main(argv) == 2, argv
            err = [line for line in capsys.readouterr().err.strip().splitlines() if "warning" not in line]
            assert len(err) == 1 and culprit in err[0] and "Traceback" not in err[0], (argv, err)
    finally:
        busy.close()


def test_model_card_says_what_is_not_known(service, tmp_path):
    from reidkit.serve import model_card

    manifest = service.index.manifest
    card = model_card(manifest, None, {"model": "osnet_x0_25", "pretrained": "/somewhere/w.pth"})
    assert card["trained_on"] is None and card["evaluation"] is None and card["weights_file"] == "w.pth"
    assert model_card(manifest, None, {"checkpoint": str(tmp_path / "last.pt")})["evaluation"] is None
    (tmp_path / "eval.json").write_text('{"dataset": "market1501", "rank1": 0.9, "mAP": 0.8, "cmc": [0.9]}')
    evaluation = model_card(manifest, None, {"checkpoint": str(tmp_path / "last.pt")})["evaluation"]
    assert evaluation == {"rank1": 0.9, "mAP": 0.8, "dataset": "market1501", "file": "eval.json"}
