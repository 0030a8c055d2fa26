"""The HTTP API through FastAPI's test client: answers, limits, and JSON errors for bad input."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi_offline")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import tiny_arrays  # noqa: E402
from fashion_cnn.predict import Predictor  # noqa: E402
from fashion_cnn.serve import create_app  # noqa: E402

MAX_FILES, MAX_BYTES, MAX_BODY = 3, 50_000, 120_000


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def photo() -> bytes:
    """A dark shape on a light, larger-than-28x28 colour background, as a JPEG: the preprocessing path."""
    pixels = np.full((90, 120, 3), 235, np.uint8)
    pixels[20:75, 40:80] = (40, 30, 90)
    return encode(pixels, "JPEG")


@pytest.fixture(scope="module")
def client(model_file):
    with TestClient(create_app(model_file, MAX_FILES, MAX_BYTES, MAX_BODY)) as client:
        yield client


def upload(*files: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in files]


def test_health_model_and_local_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/model").json()
    assert meta["architecture"] == "baseline" and len(meta["class_names"]) == 10
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_predictions_match_the_predictor(client, model_file):
    images = [("tiny.png", encode(tiny_arrays(1)[0][0])), ("photo.jpg", photo())]
    response = client.post("/predict?top_k=4", files=upload(*images))
    assert response.status_code == 200
    expected = Predictor(model_file).predict([data for _, data in images], top_k=4)
    for result, want, (name, _) in zip(response.json()["predictions"], expected, images):
        assert result["filename"] == name and result["error"] is None
        assert result["class_name"] == want.class_name and result["class_index"] == want.class_index
        assert list(result["probabilities"].values()) == pytest.approx(want.probabilities, abs=1e-6)
        assert [r["class_name"] for r in result["top_k"]] == [name for name, _ in want.top_k]
        png = base64.b64decode(result["image"].removeprefix("data:image/png;base64,"))
        seen = np.asarray(Image.open(io.BytesIO(png))).astype(np.float32) / 255
        assert seen.shape == (28, 28) and np.abs(seen - want.image).max() < 1e-6


def test_a_bad_file_gets_its_own_error_and_the_others_are_answered(client):
    response = client.post("/predict", files=upload(("good.png", photo()), ("notes.txt", b"hello")))
    assert response.status_code == 200
    good, bad = response.json()["predictions"]
    assert good["class_name"] and good["error"] is None
    assert bad["class_name"] is None and bad["error"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name, data", [
    ("notes.txt", b"just text"),
    ("empty.png", b""),
    ("cut.png", encode(tiny_arrays(1)[0][0])[:60]),
    ("bomb.png", encode(np.zeros((7000, 7000), bool))),  # 49 megapixels in a few kilobytes
])
def test_only_bad_files_get_422_with_the_reason(client, model_file, name, data):
    response = client.post("/predict", files=upload((name, data)))
    reason = Predictor(model_file).predict([data])[0].error
    assert response.status_code == 422 and reason
    assert f"{name}: {reason}" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_a_file_over_the_size_limit_gets_413(client):
    big = np.random.default_rng(0).integers(0, 256, (256, 256), np.uint8)  # noise: PNG cannot shrink it
    response = client.post("/predict", files=upload(("ok.png", photo()), ("big.png", encode(big))))
    assert response.status_code == 413
    assert "big.png" in response.json()["detail"] and f"{MAX_BYTES:,}-byte limit" in response.json()["detail"]


def test_a_request_over_the_body_limit_gets_413_as_json(client):
    declared = client.post("/predict", files=upload(("huge.png", b"\0" * (MAX_BODY + 1))))
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit is found while reading
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="huge.png"\r\n\r\n'
        yield from (b"\0" * 10_000 for _ in range(MAX_BODY // 10_000 + 1))
        yield b"\r\n--b--\r\n"

    streamed = client.post("/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and streamed.json()["detail"]


def test_too_many_files_get_400(client):
    response = client.post("/predict", files=upload(*[(f"{i}.jpg", photo()) for i in range(MAX_FILES + 1)]))
    assert response.status_code == 400 and "Too many files" in response.json()["detail"]


@pytest.mark.parametrize("request_kwargs, status", [
    ({}, 422),  # no files field
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400),
    ({"data": {"files": "not a file"}}, 422),
])
def test_malformed_requests_get_json_errors(client, request_kwargs, status):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status and response.json()["detail"]


def test_top_k_is_validated(client):
    assert client.post("/predict?top_k=0", files=upload(("a.jpg", photo()))).status_code == 422
    best = client.post("/predict?top_k=10", files=upload(("a.jpg", photo()))).json()["predictions"][0]
    probabilities = [r["probability"] for r in best["top_k"]]
    assert len(probabilities) == 10 and probabilities == sorted(probabilities, reverse=True)


def test_samples_are_test_images_when_the_dataset_is_installed(client):
    samples = client.get("/samples").json()
    for sample in samples:
        png = client.get(sample["url"])
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (28, 28)
    assert len(samples) in (0, 10)  # one per class, or none without the data
    assert client.get(f"/samples/{len(samples)}.png").status_code == 404


def test_an_internal_failure_is_a_json_500_and_the_server_goes_on(model_file, monkeypatch):
    with TestClient(create_app(model_file), raise_server_exceptions=False) as client:
        with monkeypatch.context() as patch:
            patch.setattr(Predictor, "predict", lambda *args: 1 / 0)
            response = client.post("/predict", files=upload(("a.jpg", photo())))
        assert response.status_code == 500 and response.json()["detail"] == "internal error (ZeroDivisionError)"
        assert client.post("/predict", files=upload(("a.jpg", photo()))).status_code == 200


def test_start_up_names_the_model_it_serves(model_file, monkeypatch, capsys):
    import uvicorn

    from fashion_cnn import serve

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # leave the other tests' threads alone
    serve.run(model_file, port=8123)
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first == f"model: {model_file} (baseline)" and "http://127.0.0.1:8123/" in second and served
