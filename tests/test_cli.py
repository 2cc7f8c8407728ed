"""End to end through ``reidkit.cli.main``: train -> eval -> extract -> search on synthetic data."""

import json

import numpy as np
import pytest
import yaml

from reidkit.cli import main

TINY = {
    "data": {
        "name": "synthetic",
        "options": {"num_train_ids": 8, "num_test_ids": 4, "num_cameras": 2, "image_size": [32, 16], "num_distractors": 2},
        "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2, "num_workers": 0,
    },
    "model": {"name": "osnet_x0_25"},
    "train": {"max_epochs": 1, "iters_per_epoch": 2, "eval_every": 0, "amp": False},
    "eval": {"max_rank": 5},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg), "--output", str(root / "run"), "--set", "optim.lr=1e-3"]) == 0
    return root


def test_train_writes_run(run_dir):
    run = run_dir / "run"
    assert {"last.pt", "config.yaml", "metrics.jsonl", "results.json"} <= {p.name for p in run.iterdir()}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-3
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["mAP"] <= 1 and results["epochs"] == 1


def test_eval_json_and_dataset_options(run_dir, capsys):
    out = run_dir / "m.json"
    assert main(["eval", "--checkpoint", str(run_dir / "run" / "last.pt"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"rank1", "rank5", "mAP", "mINP"} <= set(metrics)
    # the same checkpoint on another synthetic split given on the command line
    assert main(["eval", "--checkpoint", str(run_dir / "run" / "last.pt"), "--dataset-option", "seed=7",
                 "--dataset-option", "num_test_ids=3", "--set", "eval.max_rank=3"]) == 0
    assert "rank1=" in capsys.readouterr().out


def test_extract_writes_features(run_dir):
    out = run_dir / "f.npz"
    assert main(["extract", "--checkpoint", str(run_dir / "run" / "last.pt"), "--output", str(out)]) == 0
    data = np.load(out)
    n = len(data["paths"])
    assert data["features"].shape[0] == n == len(data["pids"]) == len(data["camids"]) == len(data["splits"])
    assert set(data["splits"]) == {"query", "gallery"}


def test_search_prints_ranking_and_writes_png(run_dir, capsys):
    from PIL import Image

    gallery = run_dir / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for name in ["0001_c1_a.jpg", "0001_c2_b.jpg", "0002_c1_a.jpg", "0003_c2_a.jpg"]:
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(gallery / name)
    png = run_dir / "grid.png"
    code = main(["search", "--checkpoint", str(run_dir / "run" / "last.pt"), "--gallery", str(gallery),
                 "--query", str(gallery / "0001_c1_a.jpg"), "--topk", "3", "--output", str(png)])
    assert code == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("    ") or l.strip()[:1].isdigit()]
    assert len(lines) == 3
    assert "0001_c1_a.jpg" in lines[0]  # the query itself is in the gallery: distance 0 ranks first
    assert Image.open(png).size[0] > 0


def test_listing_commands(capsys):
    assert main(["models"]) == 0
    assert "osnet_x1_0" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "cuhk01" in capsys.readouterr().out


def test_bad_config_key_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim: {lrr: 0.1}\n")
    assert main(["train", str(cfg), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "valid keys" in err


def test_export_then_eval_the_onnx_file_matches_the_checkpoint(run_dir, capsys):
    ck, onnx = str(run_dir / "run" / "last.pt"), str(run_dir / "m.onnx")
    assert main(["export", "--checkpoint", ck, "--output", onnx, "--dynamic-batch"]) == 0
    assert "min cosine 1.0" in capsys.readouterr().out
    a, b = run_dir / "a.json", run_dir / "b.json"
    assert main(["eval", "--checkpoint", ck, "--json", str(a), "--backend", "torch"]) == 0
    assert main(["eval", "--model", onnx, "--dataset", "synthetic", "--json", str(b), "--dataset-option",
                 "num_train_ids=8", "--dataset-option", "num_test_ids=4", "--dataset-option", "num_cameras=2",
                 "--dataset-option", "image_size=[32, 16]", "--dataset-option", "num_distractors=2"]) == 0
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    assert abs(ma["mAP"] - mb["mAP"]) < 1e-6 and ma["rank1"] == mb["rank1"]


def test_eval_ranking_options(run_dir, capsys):
    """--rerank / --aqe / --flip / --single-shot change the evaluation and are recorded."""
    ck = str(run_dir / "run" / "last.pt")
    results = {}
    for name, flags in {"plain": [], "rerank": ["--rerank", "--set", "eval.rerank.k1=5", "--set", "eval.rerank.k2=2"],
                        "aqe": ["--aqe", "--set", "eval.aqe.k=2"], "flip": ["--flip"],
                        "single": ["--single-shot", "3"]}.items():
        out = run_dir / f"{name}.json"
        assert main(["eval", "--checkpoint", ck, "--json", str(out), *flags]) == 0, name
        results[name] = json.loads(out.read_text())
    assert results["single"]["repeats"] == 3 and "rank1" in results["single"]["std"]
    for name in ("rerank", "aqe", "flip", "single"):
        assert results[name]["mAP"] != results["plain"]["mAP"], name


class _Payload:
    """Unpickling this would create ``marker``: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_as_pretrained_is_one_line_and_never_runs(tmp_path, capsys):
    import pickle

    marker, evil = tmp_path / "ran", tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_Payload(marker)))  # protocol 4/5, as pickle.dumps writes
    assert main(["eval", "--model", "osnet_x0_25", "--pretrained", str(evil), "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1, err  # no torch "Detected pickle protocol" warning line
    assert "evil.pth" in err and "a plain pickle, not written by torch.save" in err and "opcode" not in err


def test_export_check_dataset_is_the_dataset_flag(tmp_path):
    from reidkit.cli import build_parser

    def parse(*extra):
        return build_parser().parse_args(["export", "--model", "osnet_x0_25", "--output", str(tmp_path / "m.onnx"), *extra])

    assert parse("--check-dataset", "synthetic").dataset == "synthetic"
    assert parse("--dataset", "synthetic").dataset == "synthetic"
    assert parse().dataset is None


def test_set_model_kwargs_builds_that_model(tmp_path, capsys):
    """``--model NAME --set model.kwargs.K=V`` builds the model with K=V (torchreid's ResNet-50
    reading is ``last_stride=2, head=pool``); a keyword the model lacks is one line, exit 2."""
    from reidkit.cli._common import _model_kwargs

    assert _model_kwargs(["model.kwargs.last_stride=2", "model.kwargs.head=pool", "eval.flip=true"]) == {
        "last_stride": 2, "head": "pool"}
    assert main(["extract", "--model", "osnet_x0_25", "--set", "model.kwargs.bogus=1", "--dataset", "synthetic",
                 "--output", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err and "model.kwargs" in err


@pytest.mark.parametrize("env, command, expected", [
    (None, "models", 0), (None, "extract", 1), ("default", "extract", 0), (None, "train", 0),
])
def test_inference_commands_keep_freed_memory_unless_told(monkeypatch, env, command, expected):
    """The inference commands switch glibc to reusing freed memory before they run (train
    follows train.reuse_memory instead); REIDKIT_MALLOC=default leaves the allocator alone."""
    from reidkit.engine import speed

    calls = []
    monkeypatch.setattr(speed, "reuse_freed_memory", lambda enabled=True: calls.append(enabled) or True)
    if env is None:
        monkeypatch.delenv("REIDKIT_MALLOC", raising=False)
    else:
        monkeypatch.setenv("REIDKIT_MALLOC", env)
    argv = {"models": ["models"], "extract": ["extract", "--model", "nonexistent_model_xyz", "--output", "/nonexistent/x.npz"],
            "train": ["train", "/nonexistent/config.yaml"]}[command]
    main(argv)  # fails on its bad input after the switch (or not); only the switch matters here
    assert len(calls) == expected
