"""The ASGI app of ``multiguard serve``: certified predictions over HTTP (FastAPI).

:func:`create_app` takes a :class:`~multiguard.serving.predict.LoadedModel` (built once) and
:class:`ServeSettings` and returns the app: ``GET /health``, ``GET /v1/model``, ``POST /v1/predict`` (the objects
``multiguard predict --json`` prints, one per uploaded image, and ``batched_requests``, how many requests shared
the model call), the Open Inference Protocol v2 endpoints
(:mod:`multiguard.serving.oip`) and the web page ``GET /``. Every answer to a bad request is a 4xx with a JSON
``{"error": "..."}`` naming the problem. Without a ``seed``, each request's noise is seeded from
:func:`secrets.randbits` (the operating system's secure randomness): an attacker cannot aim an input at noise it
cannot know.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from multiguard.serving.batching import InferenceQueue
from multiguard.serving.oip import add_oip_routes
from multiguard.serving.predict import LoadedModel
from multiguard.serving.state import RequestError, ServerState, ServeSettings

__all__ = ["RequestError", "ServeSettings", "create_app"]

#: Endpoints open without the token (a load balancer's health checks, the page itself, which holds no data).
PUBLIC_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/", "/static/app.js"})
STATIC = Path(__file__).with_name("static")


def create_app(model: LoadedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (loaded once; :func:`~multiguard.serving.predict.load_model`) with
    ``settings`` (default :class:`ServeSettings`). The inference worker starts with the app's lifespan and stops
    after the requests in flight are answered."""
    from contextlib import asynccontextmanager

    state = ServerState(model.load(), settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - the shape FastAPI expects
        state.queue = InferenceQueue(state.settings.max_queue, max_batch_images=state.settings.max_batch_images,
                                     merge=state.merge)
        yield
        state.queue.close()

    app = FastAPI(title="MultiGuard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.multiguard = state
    _add_middleware(app, state.settings)
    _add_error_handlers(app)
    _add_routes(app, state)
    add_oip_routes(app, state)
    return app


def _add_middleware(app: FastAPI, settings: ServeSettings) -> None:
    @app.middleware("http")
    async def guard_and_log(request: Request, call_next):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        response = _refusal(request, settings)
        if response is None:
            response = await call_next(request)
        if settings.log:
            info = request.scope.get("state", {})
            ms = (time.perf_counter() - started) * 1000
            print(f"multiguard serve: {request.method} {request.url.path} {response.status_code} "
                  f"images={info.get('images', 0)} samples={info.get('samples', 0)} ms={ms:.0f} "
                  f"batched={info.get('batched', 0)}",
                  file=sys.stderr, flush=True)
        return response


def _refusal(request: Request, settings: ServeSettings) -> JSONResponse | None:
    """The answer to a request refused before it is read: 401 without the token, 411/413 for the body."""
    if settings.token is not None and request.url.path not in PUBLIC_PATHS:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), settings.token.encode()):
            why = ("send the header 'Authorization: Bearer TOKEN'" if not given else
                   "the header must read 'Authorization: Bearer TOKEN'" if scheme.lower() != "bearer" else
                   "the token sent in 'Authorization: Bearer TOKEN' is not this server's (its --token or "
                   "MULTIGUARD_TOKEN)")
            return _error(f"unauthorized: {why}", 401, {"WWW-Authenticate": "Bearer"})
    if request.method in ("POST", "PUT", "PATCH"):
        length = request.headers.get("content-length")
        if length is None:
            return _error("body: send a Content-Length header (chunked bodies are not taken)", 411)
        if not length.isdigit() or int(length) > settings.max_body_bytes:
            return _error(f"body: {length} bytes is over this server's limit of {settings.max_body_bytes} bytes", 413)
    return None


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _add_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return _error(str(error), error.status, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(str(error.detail), error.status_code, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(f"request: {error.errors()[0].get('msg', 'invalid')}", 422)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, error: ValueError) -> JSONResponse:
        return _error(str(error), 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _error(f"internal error: {type(error).__name__}: {error}", 500)


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_identity() -> dict[str, Any]:
        return model_description(state)

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        names, (batch, file_sizes), params = await _read_upload(request, state)
        certificate = state.certificate(params)
        predictions, batched = await state.predict(batch, names, certificate)
        size = (state.model.image_size, state.model.image_size)
        for prediction, file_size in zip(predictions, file_sizes, strict=True):  # as predict says it
            prediction.file_size, prediction.certified_size, prediction.resize = file_size, size, state.settings.resize
        request.state.images, request.state.samples = len(names), sum(p.samples or 0 for p in predictions)
        request.state.batched = batched
        return {"predictions": [p.as_dict() for p in predictions], "batched_requests": batched}

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/app.js")
    async def script() -> FileResponse:
        return FileResponse(STATIC / "app.js", media_type="text/javascript")


def model_description(state: ServerState) -> dict[str, Any]:
    """``GET /v1/model``: the identity a run records (checkpoint SHA-256, architecture, classes, sigma, mode,
    noise, denoiser, thresholds) with the server's certificate defaults and limits and the package version."""
    from multiguard import __version__

    s = state.settings
    identity = {key: value for key, value in state.model.identity().items() if key not in ("checkpoint",)}
    return {**identity, "k": s.k, "k_prime": state.model.smoother.k_prime, "n0": s.n0, "n": s.n, "alpha": s.alpha,
            "q": s.q, "stop_at_radius": s.stop_at_radius, "max_n": s.max_n, "max_files": s.max_files,
            "name": s.model_name, "multiguard_version": __version__}


async def _read_upload(request: Request, state: ServerState) -> tuple[list[str], tuple[torch.Tensor, list],
                                                                   dict[str, Any]]:
    """The images of the field ``image`` of a multipart form, decoded as ``multiguard predict`` decodes files,
    and the parameters (form fields, else query parameters)."""
    limit = state.settings.max_files
    try:
        form = await request.form(max_files=limit + 1, max_fields=32)
    except StarletteHTTPException as error:
        raise RequestError(f"form: {error.detail}") from None
    files = [item for item in form.getlist("image") if hasattr(item, "read")]
    if not files:
        raise RequestError("image: no file; send one or more image files in the multipart field 'image'")
    if len(files) > limit:
        raise RequestError(f"image: too many files ({len(files)}); this server takes at most {limit} per request")
    params = {**request.query_params, **{key: value for key, value in form.items() if isinstance(value, str)}}
    names = [os.path.basename(item.filename or f"image{i}") or f"image{i}" for i, item in enumerate(files)]
    contents = [await item.read() for item in files]
    batch = await asyncio.to_thread(_decode, contents, names, state.model, state.settings.resize)
    return names, batch, params


def _decode(contents: list[bytes], names: list[str], model: LoadedModel,
            resize: str = "stretch") -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``(N, C, S, S)`` and each upload's own ``(width, height)``: each upload decoded by
    :func:`multiguard.data.load_image` (the decoder of ``predict``) from a private temporary file;
    an error names the upload, not the temporary file."""
    from multiguard.data import load_image
    from multiguard.data._common import ImageTooLargeError, image_file_size

    tensors, sizes = [], []
    with tempfile.TemporaryDirectory(prefix="multiguard-serve-") as folder:
        for i, (data, name) in enumerate(zip(contents, names, strict=True)):
            path = Path(folder) / f"upload{i}"
            path.write_bytes(data)
            try:
                tensors.append(load_image(path, model.image_size, model.channels, resize=resize))
                sizes.append(image_file_size(path))
            except ImageTooLargeError as error:
                raise RequestError(f"image {name}: {error.reason}", 413) from None
            except (ValueError, OSError) as error:
                raise RequestError(f"image {name}: {str(error).replace(str(path), name)}") from None
    batch = torch.stack(tensors)
    try:
        model.check_grid(batch, names, "this server runs with --noise sound: start it with --noise float")
    except ValueError as error:
        raise RequestError(str(error)) from None
    return batch, sizes
