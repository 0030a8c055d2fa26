"""A web demo and JSON API: `create_app(model)` builds the FastAPI application, `run` serves it.

Uploads are untrusted: the request body, each file and the file count are limited before any decoding,
`predict.load_image` enforces the pixel limit, and every failure is a JSON error with a 4xx status. The
page, its assets and the OpenAPI docs' Swagger UI are all served by the app (no CDN).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
from fastapi import File, HTTPException, Query, Request, Response, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashion_cnn.app.connections import (
    ACCEPT_BATCH,
    BACKLOG,
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    CappedSocket,
    ListeningServer,
    OncePer,
    connection_cap,
    guarded_protocol,
)
from fashion_cnn.config import TOP_K
from fashion_cnn.data.fmnist import CLASS_NAMES, FILES, DataError, find_data_dir, read_idx
from fashion_cnn.data.images import MAX_BYTES, data_url, png_bytes
from fashion_cnn.evaluation.explain import explain_predictions, overlay_png
from fashion_cnn.evaluation.predict import Prediction, Predictor, as_record
from fashion_cnn.version import __version__

MAX_FILES = 16
MAX_BODY = 64_000_000  # a whole request; each file is further held to MAX_BYTES
MAX_HEAD = 16 * 1024  # bytes of request line and headers (h11's default, stated): more is a 400
MAX_ECHO = 100  # characters of a request's content that a 422 may quote back
STATIC = Path(str(resources.files(__package__) / "static"))
# Only the app's own scripts, styles and pages; images also as data: URLs (the 28x28 previews); never framed.
CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
PATH_KEYS = {"source", "out", "data_dir"}  # metadata fields that name files or folders
HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")  # a name or [IPv6], a port
ANY_HOST = "*"  # as an allowed host: answer any Host header
REPEATED_ERRORS = OncePer(10.0)  # one filter for the server's loggers, however often run() is called


class Ranked(BaseModel):
    class_name: str
    probability: float


class FileResult(BaseModel):
    filename: str
    class_name: str | None = None
    class_index: int | None = None
    probability: float | None = Field(None, description="the top probability (calibrated)")
    probabilities: dict[str, float] = Field(default_factory=dict, description="one per class (calibrated)")
    top_k: list[Ranked] = Field(default_factory=list, description="the most probable classes, best first")
    image: str | None = Field(None, description="the 28x28 image the model saw, as a PNG data URL")
    heatmap: str | None = Field(None, description="with explain=true: where the model found its evidence for "
                                                  "the class (HiResCAM over the image), as a PNG data URL")
    unknown: bool = Field(False, description="unlike the training images: class_name is then 'unknown', "
                                             "class_index null, and top_k the best guesses")
    error: str | None = Field(None, description="why this file could not be used; the rest is then empty")


class PredictResponse(BaseModel):
    predictions: list[FileResult]
    detail: str | None = Field(None, description="set when no file could be used (status 422)")


class Sample(BaseModel):
    name: str
    label: str
    url: str


def png_data_url(image: np.ndarray) -> str:
    """An image (as png_bytes takes it) as a data URL the page can show directly."""
    return data_url(png_bytes(image))


def sample_images(class_names: list[str]) -> list[tuple[str, bytes]]:
    """(label, PNG) for the first Fashion-MNIST test image of each class; none where the dataset is not
    installed, or the model predicts other classes (a model of your own data)."""
    if list(class_names) != list(CLASS_NAMES):
        return []
    try:
        directory = find_data_dir(download=False)
        images = read_idx(directory / FILES["test_images"].name, FILES["test_images"].magic)
        labels = read_idx(directory / FILES["test_labels"].name, FILES["test_labels"].magic)
    except DataError:
        return []
    firsts = sorted(int(np.argmax(labels == c)) for c in np.unique(labels))
    return [(class_names[labels[i]], png_bytes(images[i])) for i in firsts]


def file_result(filename: str, p: Prediction, class_names: list[str], heat: np.ndarray | None = None
                ) -> FileResult:
    record = as_record(p, class_names)  # its source and probability are not FileResult fields: ignored
    return FileResult(**record, filename=filename, image=None if p.image is None else png_data_url(p.image),
                      heatmap=None if heat is None else data_url(overlay_png(p.image, heat)))


def predict_and_explain(predictor: Predictor, blobs: list[bytes], top_k: int, explain: bool,
                        min_confidence: float | None = None) -> tuple[list[Prediction], list[np.ndarray | None]]:
    predictions = predictor.predict(blobs, top_k, min_confidence=min_confidence, errors="report")
    return predictions, (explain_predictions(predictor, predictions) if explain else [None] * len(predictions))


class DeclaredSizeLimit:
    """413 with a JSON body for a request whose Content-Length is over the limit, before it is read.

    The routes' own max_body_size also stops bodies that arrive without a length, but answers a
    declared length in plain text, which clients expecting JSON errors (the page too) cannot read.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if length.isdigit() and int(length) > self.max_body:
            response = JSONResponse({"detail": f"request of {int(length):,} bytes, over the "
                                               f"{self.max_body:,}-byte limit"}, status_code=413)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class SecurityHeaders:
    """The headers that keep a browser from running, framing or sniffing anything but the app's own files."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def host_names(host: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """The names a server listening on host answers to in a Host header, besides IP addresses: localhost,
    host itself, this machine's name when host is every address ("0.0.0.0", "::", ""), and allowed
    (ANY_HOST: any name)."""
    names = {"localhost", host, *allowed, *([socket.gethostname()] if host in ("", "0.0.0.0", "::") else [])}
    return frozenset(name.lower().rstrip(".") for name in names if name)


def host_refusal(value: str, names: frozenset[str]) -> tuple[int, str] | None:
    """(status, reason) for a Host header naming none of names (421) or none at all (400); None to answer.
    An IP address is always answered: a page can only rebind a name of its own to this machine."""
    match = HOST_HEADER.fullmatch(value)
    if match is None:
        return 400, f"malformed Host header {value[:MAX_ECHO]!r}"
    name = match[1].removeprefix("[").removesuffix("]").lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        if match[1].startswith("["):
            return 400, f"malformed Host header {value!r}"
    if name in names or ANY_HOST in names:
        return None
    return 421, f"this server does not answer to {name!r} (start it with --allowed-host {name} to allow it)"


class HostCheck:
    """Refuses a request whose Host header names another host (see host_refusal), as JSON: a page of
    another site whose name it made resolve to this machine (DNS rebinding) could otherwise read the
    answers, /model among them. A request without one is answered: every browser sends one."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = Headers(scope=scope).get("host") if scope["type"] == "http" else None
        refusal = None if value is None else host_refusal(value, self.names)
        if refusal is not None:
            status, reason = refusal
            return await JSONResponse({"detail": reason}, status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)


def public_metadata(meta: dict) -> dict:
    """The model's metadata without file system paths (where its training data and runs were): the
    fields known to hold one, and any other value that is an absolute path."""
    return {key: public_metadata(value) if isinstance(value, dict) else value for key, value in meta.items()
            if key not in PATH_KEYS and not (isinstance(value, str) and value.startswith(("/", "~", "\\")))}


def bounded_errors(errors: Iterable[dict]) -> list[dict]:
    """Validation errors with what they quote of the request cut short: a file part sent without a
    file name is validated as text and would be echoed whole."""
    def short(value) -> object:
        text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value))
        return value if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}... ({len(text):,} characters)"

    return [{**e, "input": short(e["input"])} if "input" in e else e for e in jsonable_encoder(errors)]


def create_app(model: str | Path | None = None, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES,
               max_body: int = MAX_BODY, min_confidence: float | None = None,
               hosts: frozenset[str] | None = None) -> FastAPIOffline:
    """The application for one model (default: the shipped one; see predict.resolve_model_path);
    min_confidence as in Predictor, overridable per request. hosts: the names it answers to in a
    Host header besides IP addresses (see HostCheck; `run` gives them); None: any."""
    predictor = Predictor(model, min_confidence=min_confidence)
    samples = sample_images(predictor.class_names)
    # One worker: inference never blocks the event loop, and torch, which already uses every core for
    # one batch, never runs several batches at once.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
    # The API docs page is ours (static/docs.html): the library's has an inline script, which the CSP
    # forbids. No ReDoc page.
    app = FastAPIOffline(title="fashion-cnn", version=__version__, docs_url=None, redoc_url=None,
                         description=f"Classify images with a CNN ({predictor.meta['architecture']}) into its "
                                     f"classes: {', '.join(predictor.class_names)}.")
    app.state.predictor = predictor  # run() names the model it serves
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(DeclaredSizeLimit, max_body=max_body)
    if hosts is not None:
        app.add_middleware(HostCheck, names=hosts)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Exception)
    async def json_500(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def json_422(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": bounded_errors(exc.errors())}, status_code=422)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.path.name, "architecture": predictor.meta["architecture"]}

    @app.get("/model")
    async def model_metadata() -> dict:
        """The model file's metadata: architecture, class names, input format, test accuracy, ..."""
        return {"file": predictor.path.name, **public_metadata(predictor.meta)}

    @app.get("/samples")
    async def list_samples() -> list[Sample]:
        """A few Fashion-MNIST test images to try (empty when the dataset is not installed or the model
        predicts other classes)."""
        return [Sample(name=f"{label} (test image)", label=label, url=f"/samples/{i}.png")
                for i, (label, _) in enumerate(samples)]

    @app.get("/samples/{index}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such sample"}})
    async def sample_png(index: int) -> Response:
        if not 0 <= index < len(samples):
            raise HTTPException(404, f"no sample {index}; there are {len(samples)}")
        return Response(samples[index][1], media_type="image/png")

    @app.post("/predict", response_model=PredictResponse, max_body_size=max_body,
              form_limits={"max_files": max_files},
              responses={400: {"description": "malformed form or too many files"},
                         413: {"description": f"a file over {max_bytes:,} bytes or a request over "
                                              f"{max_body:,} bytes"},
                         422: {"model": PredictResponse, "description": "no file could be used"}})
    async def predict(files: list[UploadFile] = File(..., description=f"up to {max_files} images"),
                      top_k: int = Query(TOP_K, ge=1, le=len(predictor.class_names)),
                      explain: bool = Query(False, description="also return each image's heat map"),
                      min_confidence: float | None = Query(
                          None, ge=0, le=1, description="answer unknown below this calibrated top probability, "
                                                        "instead of the model's own rule")) -> JSONResponse:
        """Classify each uploaded image; a file that is not a usable image gets its own `error`."""
        for i, f in enumerate(files):
            if f.size is not None and f.size > max_bytes:
                raise HTTPException(413, f"{f.filename or f'file {i}'}: {f.size:,} bytes, "
                                         f"over the {max_bytes:,}-byte limit")
        # Read in the worker: requests queued behind it hold their files on disk (Starlette spools them),
        # not up to max_body bytes each in memory.
        found, heats = await asyncio.get_running_loop().run_in_executor(
            worker, lambda: predict_and_explain(predictor, [f.file.read() for f in files], top_k, explain,
                                           min_confidence))
        results = [file_result(f.filename or f"file {i}", p, predictor.class_names, heat)
                   for i, (f, p, heat) in enumerate(zip(files, found, heats))]
        if all(r.error for r in results):
            detail = "no usable image: " + "; ".join(f"{r.filename}: {r.error}" for r in results)
            return JSONResponse(PredictResponse(predictions=results, detail=detail).model_dump(),
                                status_code=422)
        return JSONResponse(PredictResponse(predictions=results).model_dump())

    return app


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address host resolves to, as uvicorn would open them; a one-line
    ValueError when that fails (port taken, no such address, ...)."""
    if not 0 <= port <= 65535:  # getaddrinfo would quietly take 70000 as 4464
        raise ValueError(f"port {port} is not in 0..65535")
    sockets = []
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(found):  # once each, in order
            sock = CappedSocket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)  # uvicorn listens again, and ListeningServer brings it back to BACKLOG
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sockets


def run(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
        header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
        min_confidence: float | None = None, allowed_hosts: Iterable[str] = ()) -> None:
    """Serve until interrupted. The default host is loopback only; pass 0.0.0.0 to serve the network.
    Requests are answered when their Host header is an IP address, localhost, host, or one of
    allowed_hosts (ANY_HOST: any); see host_names.

    "serving on ..." is printed once the port is bound and listening: a client may connect from then on.
    header_timeout, body_timeout and a cap on open connections (from the descriptor limit) keep slow
    clients from locking out the others (see connections.py).
    """
    import torch  # torch costs seconds of start-up: the server's module loads without it
    import uvicorn  # serve's extra

    # A request is a batch of a few images: splitting it across threads costs more than it saves, and
    # under load those threads wait for each other (single-image latency 2 ms with one, 10-70 with two).
    torch.set_num_threads(1)
    app = create_app(model, min_confidence=min_confidence, hosts=host_names(host, allowed_hosts))
    sockets = listen(host, port)
    bound = sockets[0].getsockname()[1]
    print(app.state.predictor.describe(), flush=True)
    print(f"serving on http://{f'[{host}]' if ':' in host else host}:{bound}/ (API docs at /docs)", flush=True)
    protocol = guarded_protocol(header_timeout, connection_cap(), body_timeout)
    config = uvicorn.Config(app, http=protocol, ws="none", log_level="info", backlog=ACCEPT_BATCH,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=MAX_HEAD, server_header=False)
    for name in ("asyncio", "uvicorn.error"):  # a failure repeated for every connection is logged once a while
        logging.getLogger(name).addFilter(REPEATED_ERRORS)
    ListeningServer(config).run(sockets=sockets)
