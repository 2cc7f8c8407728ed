"""``reidkit index build|add|remove|info`` and ``reidkit search --index`` end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from reidkit.cli import main

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    for pid in range(1, 7):
        for cam in (1, 2):
            img = np.random.default_rng(pid * 10 + cam).integers(0, 255, (32, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"{pid:04d}_c{cam}_0.png")
    return root


def test_build_search_remove_add(tiny_run, gallery, tmp_path, capsys):
    ck, idx = str(tiny_run / "last.pt"), str(tmp_path / "idx")
    assert main(["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", idx]) == 0
    assert main(["index", "info", idx]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["count"] == 12 and info["manifest"]["model_name"] == "osnet_x0_25"
    query = str(gallery / "0003_c1_0.png")
    out = tmp_path / "r.json"
    assert main(["search", "--index", idx, "--query", query, "--topk", "4", "--json", str(out),
                 "--output", str(tmp_path / "g.png")]) == 0  # the index knows its model
    matches = json.loads(out.read_text())["results"][0]["matches"]
    assert matches[0]["path"].endswith("0003_c1_0.png") and matches[0]["pid"] == 3 and matches[0]["camid"] == 0
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    assert main(["search", "--index", idx, "--query", query, "--topk", "4", "--rerank", "--output",
                 str(tmp_path / "g.png")]) == 0
    assert main(["index", "remove", idx, "--ids", str(matches[0]["id"])]) == 0
    assert main(["index", "add", idx, "--images", str(gallery)]) == 0
    assert "23 entries" in capsys.readouterr().out


def test_bad_index_inputs(tiny_run, gallery, tmp_path, capsys):
    ck, idx = str(tiny_run / "last.pt"), str(tmp_path / "idx")
    assert main(["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", idx]) == 0
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())
    cases = [
        (["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", idx], "idx"),
        (["index", "info", str(tmp_path / "nope")], "nope"),
        (["index", "info", str(gallery)], str(gallery)),
        (["index", "remove", idx, "--ids", "999"], "999"),
        (["search", "--index", idx, "--query", str(gallery / "0001_c1_0.png"), "--model", "osnet_x0_25",
          "--output", str(tmp_path / "g.png")], "--force"),
        (["index", "build", "--checkpoint", ck, "--output", str(tmp_path / "x")], "--images"),
        (["search", "--checkpoint", ck, "--query", str(gallery / "0001_c1_0.png")], "--gallery"),
        (["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", str(tmp_path / "y"),
          "--kind", "ivf", "--param", "nlist=4096"], "nlist"),
    ]
    for argv, culprit in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0], (argv, err)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == before  # untouched
    assert not (tmp_path / "y").exists()  # a failed build leaves nothing


def test_interrupted_build_leaves_nothing_and_the_next_build_runs(tiny_run, gallery, tmp_path, monkeypatch):
    """A build killed half-way (after its first commit) leaves no index, empty or not, at
    --output; the hidden folder it built in is removed by the next build, which succeeds."""
    import reidkit.cli.index as cli_index

    ck, idx = str(tiny_run / "last.pt"), tmp_path / "idx"
    real = cli_index._add_in_chunks

    def add_then_die(index, *args, **kwargs):
        real(index, *args, **kwargs)  # entries committed to the staging index
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cli_index, "_add_in_chunks", add_then_die)
    assert main(["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", str(idx)]) == 130
    assert not idx.exists() and not list(tmp_path.glob(".idx.*"))
    # what a kill -9 leaves (no clean-up ran): a hidden staging folder, never the target
    (tmp_path / ".idx.building-deadbeef").mkdir()
    monkeypatch.setattr(cli_index, "_add_in_chunks", real)
    assert main(["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", str(idx)]) == 0
    assert not list(tmp_path.glob(".idx.*")) and (idx / "manifest.json").is_file()


def test_build_skips_unreadable_images_when_asked(tiny_run, gallery, tmp_path, capsys):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(gallery, folder)
    (folder / "0009_c1_bad.png").write_bytes(b"not a png")
    ck, idx = str(tiny_run / "last.pt"), str(tmp_path / "idx")
    assert main(["index", "build", "--checkpoint", ck, "--images", str(folder), "--output", idx]) == 2
    assert "0009_c1_bad.png" in capsys.readouterr().err
    assert main(["index", "build", "--checkpoint", ck, "--images", str(folder), "--output", idx,
                 "--set", "data.skip_unreadable=true"]) == 0
    captured = capsys.readouterr()
    assert "12 images" in captured.out and "0009_c1_bad.png" in captured.err


def _flip_middle(path, count=64):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = bytes(b ^ 0xFF for b in data[mid : mid + count])
    path.write_bytes(bytes(data))


def test_damaged_index_files_fail_info_and_search_in_one_line(tiny_run, gallery, tmp_path, capsys):
    ck, query, png = str(tiny_run / "last.pt"), str(gallery / "0003_c1_0.png"), str(tmp_path / "g.png")
    damages = [("hnsw", "faiss-*.index", _flip_middle), ("flat", "vectors.f32", _flip_middle),
               ("flat", "vectors.f32", lambda p: _edit_json(p.parent / "manifest.json", dim=256))]
    for n, (kind, name, damage) in enumerate(damages):
        idx = tmp_path / f"idx{n}"
        assert main(["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output", str(idx),
                     "--kind", kind]) == 0
        assert main(["index", "info", str(idx), "--verify"]) == 0
        body = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        assert body["verify"]["ok"] and body["verify"]["skipped"] == [] and "checksums recorded" in body["integrity"]
        target = next(idx.glob(name))
        damage(target)
        for argv in (["index", "info", str(idx)], ["search", "--index", str(idx), "--query", query, "--output", png]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and target.name in err[0] and "corrupt" in err[0], err


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_build_from_a_dataset_and_search_json_carries_every_field(tiny_run, gallery, tmp_path):
    from reidkit_testing import TINY_RUN

    from reidkit.data import create_dataset
    from reidkit.index import GalleryIndex

    ck, idx, out = str(tiny_run / "last.pt"), str(tmp_path / "idx"), tmp_path / "r.json"
    assert main(["index", "build", "--checkpoint", ck, "--dataset", "synthetic", "--splits", "query", "gallery",
                 "--output", idx]) == 0
    data = create_dataset("synthetic", **TINY_RUN["data"]["options"])
    with GalleryIndex.open(idx) as index:
        got = [(e.path, e.pid, e.camid, e.tag) for e in index.list_entries(limit=10000).entries]
    assert got == [(s.img_path, s.pid, s.camid, "synthetic") for s in data.query + data.gallery]
    assert main(["search", "--index", idx, "--query", str(gallery / "0001_c1_0.png"), "--topk", "3", "--json", str(out),
                 "--output", str(tmp_path / "g.png")]) == 0
    matches = json.loads(out.read_text())["results"][0]["matches"]
    fields = {"rank", "score", "id", "path", "pid", "camid", "timestamp", "track_id", "tag"}
    assert len(matches) == 3 and all(set(m) == fields and m["tag"] == "synthetic" for m in matches)


def test_search_a_folder_with_rerank(tiny_run, gallery, tmp_path):
    ck, query = str(tiny_run / "last.pt"), str(gallery / "0003_c1_0.png")
    plain, reranked = tmp_path / "p.json", tmp_path / "r.json"
    base = ["search", "--checkpoint", ck, "--gallery", str(gallery), "--query", query, "--topk", "5",
            "--output", str(tmp_path / "g.png")]
    assert main(base + ["--json", str(plain)]) == 0
    assert main(base + ["--rerank", "--json", str(reranked)]) == 0
    p, r = (json.loads(f.read_text())["results"][0]["matches"] for f in (plain, reranked))
    dist = [m["distance"] for m in r]
    assert len(r) == 5 and dist == sorted(dist) and r[0]["path"] == p[0]["path"] == query
    assert dist != [m["distance"] for m in p]  # re-ranked distances, not the plain ones


def test_flip_index_embeds_queries_with_flip_and_a_contrary_flip_is_not_silent(tiny_run, gallery, tmp_path, capsys,
                                                                               monkeypatch):
    import reidkit.cli.index as cli_index
    from reidkit.index import GalleryIndex

    ck, query, png = str(tiny_run / "last.pt"), str(gallery / "0003_c1_0.png"), str(tmp_path / "g.png")
    flipped, plain = tmp_path / "flipped", tmp_path / "plain"
    build = ["index", "build", "--checkpoint", ck, "--images", str(gallery), "--output"]
    assert main(build + [str(flipped), "--flip"]) == 0 and main(build + [str(plain)]) == 0
    with GalleryIndex.open(flipped) as a, GalleryIndex.open(plain) as b:
        assert a.manifest.flip and not b.manifest.flip
    capsys.readouterr()
    real, used = cli_index._embed_paths, []

    def spy(model, paths, cfg, *args, **kwargs):
        used.append(cfg.eval.flip)
        return real(model, paths, cfg, *args, **kwargs)

    monkeypatch.setattr(cli_index, "_embed_paths", spy)
    for idx, flags, flip in [(flipped, [], True), (plain, ["--flip"], False)]:
        out, used[:] = tmp_path / f"{idx.name}.json", []
        assert main(["search", "--index", str(idx), "--query", query, "--topk", "3", "--json", str(out),
                     "--output", png] + flags) == 0
        top = json.loads(out.read_text())["results"][0]["matches"][0]
        assert used == [flip] and top["path"] == str(gallery.resolve() / "0003_c1_0.png")
        assert top["score"] == pytest.approx(1.0, abs=1e-4)  # embedded exactly as its gallery copy was
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--flip ignored" in err[0] and "built without flip" in err[0], err
