"""``reidkit serve``: the search service and its web page over a gallery index.

The model is the index's own (``IndexManifest.model_source``), checked against the manifest's
fingerprint as ``reidkit search --index`` does; ``--checkpoint`` / ``--model`` name another copy
of it (``--force`` accepts a different model). The API key comes from ``--api-key`` or, so it
stays out of the process list, the environment variable ``REIDKIT_API_KEY``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket

from ._common import UsageError, add_model_args, positive_float, positive_int

API_KEY_ENV = "REIDKIT_API_KEY"


def open_service(args):
    """The :class:`~reidkit.serve.SearchService` the flags describe (index, model, limits).

    Raises:
        GalleryIndexError, ModelMismatchError, CheckpointError, UsageError: one-line messages.
    """
    from ..embedder import Embedder
    from ..serve import SearchService, ServiceLimits, model_card
    from .index import _open_for_model

    limits = ServiceLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    if args.upload_dir and not args.writable:
        raise UsageError("--upload-dir goes with --writable (where added images are stored)")
    threads = getattr(args, "threads", None)
    if threads:
        _limit_threads(threads)
    index, model, cfg = _open_for_model(args)
    try:
        embedder = Embedder(model, device=args.device, input_size=(cfg.data.height, cfg.data.width),
                            flip=cfg.eval.flip, backend=cfg.eval.backend, batch_size=16, threads=threads)
        card = model_card(index.manifest, cfg, index.manifest.model_source)
        service = SearchService(index, embedder, card, writable=args.writable, upload_dir=args.upload_dir, limits=limits)
        warm_up(embedder)
    except BaseException:
        index.close()
        raise
    return service


def _limit_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for inference (torch, onnxruntime) and for faiss searches."""
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def warm_up(embedder) -> None:
    """Embed one blank crop, so the backend is chosen before the first request."""
    import numpy as np

    height, width = embedder.input_size
    embedder.embed([np.zeros((height, width, 3), dtype=np.uint8)])


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (so a busy port is one clear error, and port 0 picks one)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args) -> int:
    import warnings

    try:
        import uvicorn
    except ImportError:
        raise UsageError("reidkit serve needs FastAPI and uvicorn: pip install 'reidkit[serve]'") from None
    from ..serve import create_app

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    sock = _listen(args.host, args.port)
    try:
        service = open_service(args)
    except BaseException:
        sock.close()
        raise
    if api_key is None and not _is_loopback(args.host):
        warnings.warn(f"serving on {args.host} without an API key: anyone who reaches this port can search "
                      f"the gallery (set --api-key or {API_KEY_ENV})")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"reidkit serve: {len(service.index)} entries of {args.index} ({service.index.manifest.describe()}, "
          f"{service.embedder.describe()}) at http://{shown}:{port}/"
          + (" (X-API-Key required)" if api_key else "") + (" writable" if args.writable else ""), flush=True)
    config = uvicorn.Config(create_app(service, api_key=api_key), log_level=args.log_level, access_log=args.access_log)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        service.close()
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="search service (FastAPI) and web page over a gallery index")
    p.add_argument("--index", required=True, help="index folder (reidkit index build)")
    add_model_args(p, extraction=False)
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"),
                   help="inference backend (default auto: onnxruntime on CPU when installed and equal to torch)")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads for embedding and searching (default: one per core; on 2 cores, 1 serves more "
                        "requests/s: benchmarks/bench_serve.py)")
    p.add_argument("--force", action="store_true", help="accept a model other than the one that built the index")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument("--api-key", help=f"require this X-API-Key header (default: ${API_KEY_ENV} if set)")
    p.add_argument("--writable", action="store_true", help="allow POST /gallery to add images to the index")
    p.add_argument("--upload-dir", help="with --writable: where added images are stored (default INDEX/uploads)")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="largest uploaded file in MiB (default 10)")
    p.add_argument("--max-pixels", type=positive_int, default=16_777_216,
                   help="largest uploaded image in pixels, checked before decoding (default 16777216 = 4096 x 4096)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.set_defaults(func=cmd_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0..65535)")
    return value
