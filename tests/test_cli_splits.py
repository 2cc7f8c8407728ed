"""``reidkit splits``: one recipe over several CUHK01 identity splits, mean and std, resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from reidkit.cli import main
from reidkit.cli.splits import parse_split_ids


def _campus(folder: Path, num_ids: int = 12) -> None:
    """A CUHK01 replica: 4 images per id (2 per camera), colour coded by pid."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for pid in range(1, num_ids + 1):
        base = rng.integers(0, 255, 3)
        for n in range(1, 5):
            pixels = np.clip(base + rng.integers(-20, 20, (32, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{pid:04d}{n:03d}.png")


@pytest.fixture()
def recipe(tmp_path):
    _campus(tmp_path / "campus")
    cfg = {
        "data": {"name": "cuhk01", "root": str(tmp_path), "options": {"num_test_ids": 4},
                 "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2,
                 "num_workers": 0, "eval_batch_size": 16},
        "model": {"name": "osnet_x0_25"},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"max_epochs": 1, "iters_per_epoch": 1, "eval_every": 0, "amp": False},
        "eval": {"max_rank": 5},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_parse_split_ids():
    assert parse_split_ids("0-9") == list(range(10))
    assert parse_split_ids("3,1, 1") == [1, 3]
    assert parse_split_ids("4") == [4]
    for bad in ("", "a", "3-1", "-2", "1,,2"):
        with pytest.raises(Exception, match="--splits"):
            parse_split_ids(bad)


def test_splits_mean_std_and_resume(recipe, tmp_path, capsys):
    out = tmp_path / "runs"
    # a recipe's own split_id (configs/cuhk01.yaml has one) is replaced by each split's
    assert main(["splits", str(recipe), "--splits", "0-1", "--output", str(out),
                 "--set", "data.options.split_id=5"]) == 0
    summary = json.loads((out / "splits.json").read_text())
    per_split = [summary["per_split"][str(i)] for i in (0, 1)]
    for key in ("rank1", "rank5", "mAP", "mINP"):
        values = [json.loads((out / f"split{i}" / "results.json").read_text())[key] for i in (0, 1)]
        assert [p[key] for p in per_split] == values
        assert summary["mean"][key] == pytest.approx(np.mean(values))
        assert summary["std"][key] == pytest.approx(np.std(values))
    # each split really trained on its own identities
    configs = [yaml.safe_load((out / f"split{i}" / "config.yaml").read_text()) for i in (0, 1)]
    assert [c["data"]["options"]["split_id"] for c in configs] == [0, 1]
    assert "rank1" in capsys.readouterr().out
    # a re-run trains nothing again: the finished splits' results are reused as they are
    stamp = os.path.getmtime(out / "split0" / "last.pt")
    assert main(["splits", str(recipe), "--splits", "0-1", "--output", str(out)]) == 0
    assert os.path.getmtime(out / "split0" / "last.pt") == stamp
    assert json.loads((out / "splits.json").read_text()) == summary


def test_splits_bad_input_is_one_line(recipe, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["splits", str(recipe), "--splits", "9-2", "--output", str(out)]) == 2
    assert "--splits" in capsys.readouterr().err
    assert main(["splits", str(recipe), "--set", "optim.lr=-1", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.lr" in err and len(err.splitlines()) == 1
    (out / "split0").mkdir(parents=True)
    (out / "split0" / "results.json").write_text("{not json")
    assert main(["splits", str(recipe), "--splits", "0", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "results.json" in err and len(err.splitlines()) == 1
