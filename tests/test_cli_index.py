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
