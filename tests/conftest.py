"""Shared fixtures: a tiny trained checkpoint on the synthetic dataset (built once per session)."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

TINY_RUN = {
    "data": {
        "name": "synthetic",
        "options": {"num_train_ids": 8, "num_test_ids": 4, "num_cameras": 2, "image_size": [32, 16],
                    "num_distractors": 2},
        "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2,
        "num_workers": 0, "eval_batch_size": 16,
    },
    "model": {"name": "osnet_x0_25"},
    "optim": {"name": "adam", "lr": 1e-3},
    "train": {"max_epochs": 1, "iters_per_epoch": 2, "eval_every": 0, "amp": False},
    "eval": {"max_rank": 5},
}


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config_file) -> Path:
    """A finished one-epoch run directory (``last.pt``, ``config.yaml``, ...)."""
    from reidkit.engine.config import load_config
    from reidkit.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    Trainer(load_config(tiny_config_file), run, log=lambda *_: None).fit()
    return run
