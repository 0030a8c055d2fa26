"""A web demo and JSON API: `create_app(model)` builds the FastAPI application, `run` serves it.

Uploads are untrusted: the request body, each file and the file count are limited before any decoding,
`predict.load_image` enforces the pixel limit, and every failure is a JSON error with a 4xx status. The
page, its assets and the OpenAPI docs' Swagger UI are all served by the app (no CDN).
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .version import __version__
from .data import FILES, DataError, find_data_dir, read_idx
from .predict import MAX_BYTES, Prediction, Predictor, as_record, png_bytes

MAX_FILES = 16
MAX_BODY = 64_000_000  # a whole request; each file is further held to MAX_BYTES
STATIC = Path(str(resources.files(__package__) / "static"))


class Ranked(BaseModel):
    class_name: str
    probability: float


class FileResult(BaseModel):
    filename: str
    class_name: str | None = None
    class_index: int | None = None
    probabilities: dict[str, float] = Field(default_factory=dict, description="one per class")
    top_k: list[Ranked] = Field(default_factory=list, description="the most probable classes, best first")
    image: str | None = Field(None, description="the 28x28 image the model saw, as a PNG data URL")
    error: str | None = Field(None, description="why this file could not be used; the rest is then empty")


class PredictResponse(BaseModel):
    predictions: list[FileResult]
    detail: str | None = Field(None, description="set when no file could be used (status 422)")


class Sample(BaseModel):
    name: str
    label: str
    url: str


def png_data_url(image: np.ndarray) -> str:
    """A float image in [0, 1] as a data URL the page can show directly."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def sample_images(class_names: list[str]) -> list[tuple[str, bytes]]:
    """(label, PNG) for the first test image of each class; none where the dataset is not installed."""
    try:
        directory = find_data_dir(download=False)
        images = read_idx(directory / FILES["test_images"].name, FILES["test_images"].magic)
        labels = read_idx(directory / FILES["test_labels"].name, FILES["test_labels"].magic)
    except DataError:
        return []
    firsts = sorted(int(np.argmax(labels == c)) for c in np.unique(labels) if c < len(class_names))
    return [(class_names[labels[i]], png_bytes(images[i])) for i in firsts]


def file_result(filename: str, p: Prediction, class_names: list[str]) -> FileResult:
    record = as_record(p, class_names)  # its source and probability are not FileResult fields: ignored
    return FileResult(**record, filename=filename, image=None if p.image is None else png_data_url(p.image))


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


def create_app(model: str | Path | None = None, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES,
               max_body: int = MAX_BODY) -> FastAPIOffline:
    """The application for one model (default: the shipped one; see predict.resolve_model_path)."""
    predictor = Predictor(model)
    samples = sample_images(predictor.class_names)
    # One worker: inference never blocks the event loop, and torch, which already uses every core for
    # one batch, never runs several batches at once.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
    app = FastAPIOffline(title="fashion-cnn", version=__version__,
                         description="Classify images of clothing with a CNN trained on Fashion-MNIST.",
                         swagger_ui_parameters={"validatorUrl": None})  # the validator badge calls out
    app.state.predictor = predictor  # run() names the model it serves
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(DeclaredSizeLimit, max_body=max_body)

    @app.exception_handler(Exception)
    async def json_500(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.path.name, "architecture": predictor.meta["architecture"]}

    @app.get("/model")
    async def model_metadata() -> dict:
        """The model file's metadata: architecture, class names, input format, test accuracy, ..."""
        return {"file": predictor.path.name, **predictor.meta}

    @app.get("/samples")
    async def list_samples() -> list[Sample]:
        """A few Fashion-MNIST test images to try (empty when the dataset is not installed)."""
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
                      top_k: int = Query(3, ge=1, le=len(predictor.class_names))) -> JSONResponse:
        """Classify each uploaded image; a file that is not a usable image gets its own `error`."""
        for i, f in enumerate(files):
            if f.size is not None and f.size > max_bytes:
                raise HTTPException(413, f"{f.filename or f'file {i}'}: {f.size:,} bytes, "
                                         f"over the {max_bytes:,}-byte limit")
        blobs = [await f.read() for f in files]
        found = await asyncio.get_running_loop().run_in_executor(worker, predictor.predict, blobs, top_k)
        results = [file_result(f.filename or f"file {i}", p, predictor.class_names)
                   for i, (f, p) in enumerate(zip(files, found))]
        if all(r.error for r in results):
            detail = "no usable image: " + "; ".join(f"{r.filename}: {r.error}" for r in results)
            return JSONResponse(PredictResponse(predictions=results, detail=detail).model_dump(),
                                status_code=422)
        return JSONResponse(PredictResponse(predictions=results).model_dump())

    return app


def run(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted. The default host is loopback only; pass 0.0.0.0 to serve the network."""
    import torch
    import uvicorn

    # A request is a batch of a few images: splitting it across threads costs more than it saves, and
    # under load those threads wait for each other (single-image latency 2 ms with one, 10-70 with two).
    torch.set_num_threads(1)
    app = create_app(model)
    print(app.state.predictor.describe(), flush=True)
    print(f"serving on http://{host}:{port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
