"""Shared fixtures: a tiny trained checkpoint on the synthetic dataset (built once per session)."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from reidkit_testing import TINY_RUN  # noqa: E402


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
