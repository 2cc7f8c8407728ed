"""The FastAPI app of ``reidkit serve``: JSON endpoints over a :class:`SearchService` and the page.

Endpoints (the OpenAPI schema is at ``/openapi.json``; no CDN-hosted docs page is served):

* ``GET /`` the search page, ``/static/...`` its script and style sheet.
* ``GET /health`` (never needs the API key) and ``GET /info``: model, model card, index size,
  dimension, limits.
* ``POST /search`` (multipart form): an image in ``file`` or the ``id`` of a gallery entry;
  ``topk``, ``rerank``, ``camids`` / ``exclude_camids`` (comma-separated), ``exclude_own_camera``,
  and for an upload its ``camid`` / ``pid`` when known.
* ``GET /gallery``: paged browse with filters; ``GET /thumb/{id}``: a JPEG thumbnail of an indexed
  image, read from the path the index stored.
* ``POST /gallery`` (only when started with ``--writable``): add the images in ``files``.

Every refusal is a 4xx JSON body ``{"error": "<one line naming the field>"}``: 400 bad input, 401
a missing or wrong ``X-API-Key`` (compared in constant time), 403 not writable, 404 unknown id,
409 index locked by another writer, 413 too large (bytes or pixels), 422 malformed parameters.
Request bodies are limited in size before they are read (``Content-Length`` and streamed bytes).
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations at run time.
import hmac
from pathlib import Path

from .service import SearchService, ServiceError

STATIC = Path(__file__).parent / "static"
_SMALL_BODY = 64 * 2**10  # bytes allowed in a request that carries no upload


def _require_fastapi():
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise ImportError("reidkit serve needs FastAPI and uvicorn: pip install 'reidkit[serve]'") from None


class _BodyLimit:
    """ASGI middleware refusing request bodies above a per-route byte limit with 413."""

    def __init__(self, app, limits: dict[tuple[str, str], int]):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi import HTTPException

        limit = self.limits.get((scope["method"], scope["path"]), _SMALL_BODY)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_json(send, 413, f"the request body declares {length.decode(errors='replace')} bytes; "
                                               f"the limit here is {limit:,}")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the request body exceeds the limit of {limit:,} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _int_list(text: str | None, field: str) -> list[int] | None:
    """``"1, 3"`` -> ``[1, 3]``; empty -> None; anything else is a 400 naming ``field``."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ServiceError(400, f"{field} must be comma-separated integers, got {text[:100]!r}") from None


def create_app(service: SearchService, api_key: str | None = None):
    """The FastAPI application serving ``service``.

    Args:
        service: the :class:`SearchService`.
        api_key: when set, every endpoint but ``/health``, the page and the schema needs the
            header ``X-API-Key`` with this value.

    Returns:
        A ``fastapi.FastAPI`` app (run it with uvicorn, or test it with its ``TestClient``).

    Raises:
        ImportError: FastAPI is not installed (the ``serve`` extra).
    """
    _require_fastapi()
    from fastapi import Depends, FastAPI

    from .. import __version__

    limits = service.limits
    app = FastAPI(title="reidkit search", version=__version__, docs_url=None, redoc_url=None,
                  description="Person re-identification search over a reidkit gallery index. Scores: cosine "
                              "similarity, larger is closer (negated re-ranked distance with rerank).")
    app.add_middleware(_BodyLimit, limits={("POST", "/search"): limits.max_upload_bytes + _SMALL_BODY,
                                           ("POST", "/gallery"): limits.max_request_bytes})
    _add_safety_headers(app)
    _add_error_handlers(app)
    keyed = [Depends(_key_check(api_key))]
    _add_page(app, service)
    _add_search(app, service, keyed)
    _add_gallery(app, service, keyed)
    return app


def _add_safety_headers(app) -> None:
    from fastapi import Request

    @app.middleware("http")
    async def safety_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'"
        return response


def _add_error_handlers(app) -> None:
    """Every refusal as ``{"error": "<one line>"}`` with its 4xx status."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ServiceError)
    async def service_error(request, err: ServiceError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        return JSONResponse({"error": f"bad request parameters: {problems}"[:2000]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=getattr(err, "headers", None))


def _key_check(api_key: str | None):
    """A dependency refusing requests without the right ``X-API-Key`` (constant-time comparison)."""
    from fastapi import Header

    expected = None if api_key is None else api_key.encode("utf-8", "surrogateescape")

    def check_key(x_api_key: str | None = Header(None, description="the API key, when the service has one")):
        if expected is None:
            return
        if x_api_key is None:
            raise ServiceError(401, "this service needs an API key in the X-API-Key header")
        if not hmac.compare_digest(x_api_key.encode("utf-8", "surrogateescape"), expected):
            raise ServiceError(401, "wrong API key in the X-API-Key header")

    return check_key


def _add_page(app, service: SearchService) -> None:
    """``/`` and ``/static`` (open), ``/health`` (open)."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="liveness (no API key needed)")
    def health():
        return {"status": "ok", "count": len(service.index)}


def _add_search(app, service: SearchService, keyed: list) -> None:
    """``GET /info`` and ``POST /search``."""
    from fastapi import File, Form, UploadFile

    limits = service.limits

    @app.get("/info", dependencies=keyed, summary="model, model card, index size and dimension, limits")
    def info():
        return service.info()

    @app.post("/search", dependencies=keyed, summary="top-k gallery entries of an uploaded image or a gallery entry")
    def search(
        file: UploadFile | None = File(None, description="the query image (JPEG, PNG, ...)"),
        id: int | None = Form(None, description="search with this gallery entry's stored embedding instead"),
        topk: int = Form(10, description=f"matches to return, 1..{limits.max_topk}"),
        rerank: bool = Form(False, description="k-reciprocal re-ranking of the best 100 candidates"),
        camids: str | None = Form(None, description="comma-separated cameras to search"),
        exclude_camids: str | None = Form(None, description="comma-separated cameras to skip"),
        exclude_own_camera: bool = Form(False, description="skip the query's own camera"),
        camid: int | None = Form(None, description="camera of the uploaded query, when known"),
        pid: int | None = Form(None, description="identity of the uploaded query, when known (frames the matches)"),
    ):
        image = None
        if file is not None:
            image = service.decode_upload(file.file.read(limits.max_upload_bytes + 1), "file")
        return service.search(image, id, topk=topk, rerank=rerank, camids=_int_list(camids, "camids"),
                              exclude_camids=_int_list(exclude_camids, "exclude_camids"),
                              exclude_own_camera=exclude_own_camera, query_camid=camid, query_pid=pid)


def _add_gallery(app, service: SearchService, keyed: list) -> None:
    """``GET /gallery``, ``GET /thumb/{id}`` and ``POST /gallery``."""
    from fastapi import File, Form, Query, UploadFile
    from fastapi.responses import Response

    limits = service.limits

    @app.get("/gallery", dependencies=keyed, summary="a page of gallery entries in id order, filtered")
    def gallery(
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=limits.max_page),
        camid: list[int] | None = Query(None, description="cameras to list (repeat the parameter)"),
        pid: int | None = None,
        track_id: int | None = None,
        tag: str | None = Query(None, max_length=200),
        since: float | None = Query(None, description="timestamp >= since, seconds since the epoch"),
        until: float | None = Query(None, description="timestamp <= until, seconds since the epoch"),
    ):
        return service.browse(offset, limit, camids=camid, pid=pid, track_id=track_id, tag=tag, since=since, until=until)

    @app.get("/thumb/{entry_id}", dependencies=keyed, summary="JPEG thumbnail of an indexed entry's image",
             response_class=Response)
    def thumb(entry_id: int):
        return Response(service.thumbnail(entry_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/gallery", dependencies=keyed, summary="add images (only with --writable), in one commit")
    def add(
        files: list[UploadFile] = File(..., description="the images"),
        pid: int | None = Form(None), camid: int | None = Form(None), timestamp: float | None = Form(None),
        track_id: int | None = Form(None), tag: str | None = Form(None, max_length=200),
    ):
        if not service.writable:
            raise ServiceError(403, "this service is read-only: start it with --writable to add images")
        if len(files) > limits.max_files:
            raise ServiceError(400, f"{len(files)} files in one request; the limit is {limits.max_files}")
        uploads = [f.file.read(limits.max_upload_bytes + 1) for f in files]
        return service.add(uploads, pid=pid, camid=camid, timestamp=timestamp, track_id=track_id, tag=tag)
