"""Fixtures of the service tests: a small gallery of synthetic person crops indexed with the tiny
checkpoint, the service over it, a TestClient, and a real uvicorn server on loopback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serve_testlib import service_args  # noqa: E402

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="session")
def serve_gallery(tmp_path_factory) -> Path:
    """24 synthetic person crops named Market-style (``PPPP_cC_K.png``): 6 ids x 2 cameras x 2."""
    from reidkit.data import create_dataset

    root = tmp_path_factory.mktemp("serve_gallery")
    ds = create_dataset("synthetic", num_train_ids=2, num_test_ids=6, num_cameras=2, image_size=[64, 32], seed=5)
    count: dict = {}
    for s in ds.query + ds.gallery:
        key = (s.pid, s.camid)
        count[key] = count.get(key, 0) + 1
        if s.pid > 0 and count[key] <= 2:
            ds.load_image(s.img_path).save(root / f"{s.pid:04d}_c{s.camid + 1}_{count[key]}.png")
    return root


@pytest.fixture(scope="session")
def serve_index(tiny_run, serve_gallery, tmp_path_factory) -> Path:
    from reidkit.cli import main

    index = tmp_path_factory.mktemp("serve_index") / "idx"
    assert main(["index", "build", "--checkpoint", str(tiny_run / "last.pt"), "--images", str(serve_gallery),
                 "--output", str(index), "--device", "cpu"]) == 0
    return index


@pytest.fixture(scope="session")
def service(serve_index):
    from reidkit.cli.serve import open_service

    svc = open_service(service_args(serve_index))
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def client(service):
    from fastapi.testclient import TestClient

    from reidkit.serve import create_app

    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture
def index_copy(serve_index, tmp_path) -> Path:
    """A copy of the index this test may write to."""
    copy = tmp_path / "idx"
    shutil.copytree(serve_index, copy)
    return copy
