"""Helpers of the service tests (imported by conftest.py and the tests beside it)."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path


def service_args(index: Path, **overrides) -> argparse.Namespace:
    """The flags of ``reidkit serve`` (torch backend: no ONNX export at start, faster tests)."""
    values = dict(index=str(index), checkpoint=None, model=None, pretrained=None, non_strict=False, device="cpu",
                  input_size=None, mean=None, std=None, bgr=None, set=[], backend="torch", force=False, writable=False,
                  upload_dir=None, max_upload_mb=1.0, max_pixels=1_000_000)
    values.update(overrides)
    return argparse.Namespace(**values)


class LiveServer:
    """uvicorn serving an app in a thread on 127.0.0.1 (a free port); ``url`` is its address."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
