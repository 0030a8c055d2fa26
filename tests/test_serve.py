"""The HTTP API through FastAPI's test client: answers, limits, and JSON errors for bad input."""

import asyncio
import base64
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi_offline")
from conftest import tiny_arrays  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from server_harness import free_port, served, server_process  # noqa: E402

from fashion_cnn.app.serve import FileResult, create_app
from fashion_cnn.evaluation.predict import Predictor, as_json

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
    reason = Predictor(model_file).predict([data], errors="report")[0].error
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


def test_samples_are_test_images_when_the_dataset_is_installed(client, real_data):
    samples = client.get("/samples").json()
    assert sorted(s["label"] for s in samples) == sorted(real_data.class_names)  # one per class
    for sample in samples:
        png = client.get(sample["url"])
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (28, 28)
    assert client.get(f"/samples/{len(samples)}.png").status_code == 404


def test_an_internal_failure_is_a_json_500_and_the_server_goes_on(model_file, monkeypatch):
    with TestClient(create_app(model_file), raise_server_exceptions=False) as client:
        with monkeypatch.context() as patch:
            patch.setattr(Predictor, "predict", lambda *args, **kwargs: 1 / 0)
            response = client.post("/predict", files=upload(("a.jpg", photo())))
        assert response.status_code == 500 and response.json()["detail"] == "internal error (ZeroDivisionError)"
        assert client.post("/predict", files=upload(("a.jpg", photo()))).status_code == 200


def test_start_up_names_the_model_it_serves(model_file, monkeypatch, capsys):
    import uvicorn

    from fashion_cnn.app import serve

    served = []

    def run(server, sockets) -> None:
        served.append(server.config.app)
        for s in sockets:
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # leave the other tests' threads alone
    serve.run(model_file, port=0)
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first == f"model: {model_file} (baseline; not calibrated, never unknown)" and served
    assert second.startswith("serving on http://127.0.0.1:")


# --- hardening -------------------------------------------------------------------------------------

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY"}


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/docs"), ("GET", "/health"), ("GET", "/model"),
                                          ("GET", "/static/app.js"), ("GET", "/openapi.json"),
                                          ("GET", "/nowhere"), ("POST", "/predict"), ("HEAD", "/")])
def test_every_answer_carries_the_security_headers(client, method, path):
    response = client.request(method, path)
    assert response.status_code in (200, 404, 422)
    assert {k: response.headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy


def test_head_of_the_page_is_answered(client):
    response = client.head("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")


def test_the_page_and_the_docs_have_no_inline_script(client):
    """The Content-Security-Policy allows scripts from the app's own files only."""
    for path in ("/", "/docs"):
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", client.get(path).text, re.S)
        assert scripts and all('src="/static' in attributes and not body.strip() for attributes, body in scripts)
    assert client.get("/static/docs.js").status_code == 200


def test_model_metadata_names_no_file_system_path(tmp_path):
    from fashion_cnn.data.fmnist import CLASS_NAMES
    from fashion_cnn.models.files import save_model
    from fashion_cnn.models.registry import create_model

    path = tmp_path / "model.safetensors"
    save_model(path, create_model("baseline"), {
        "architecture": "baseline", "class_names": list(CLASS_NAMES),
        "config": {"epochs": 3, "out": "/home/someone/secret/runs", "data_dir": "/home/someone/secret/data"},
        "data": {"source": "/home/someone/secret/data", "sha256": {"x.gz": "ab"}},
        "notes": "~/secret/notes.txt", "class_count": 10})
    with TestClient(create_app(path)) as client:
        meta = client.get("/model").json()
    assert "/home/someone" not in json.dumps(meta)
    assert meta["config"] == {"epochs": 3} and meta["data"] == {"sha256": {"x.gz": "ab"}}
    assert meta["file"] == "model.safetensors" and meta["architecture"] == "baseline" and meta["class_count"] == 10


def test_a_422_quotes_a_nameless_file_part_only_in_part(client):
    """A file part with an empty file name is a text field to the form parser: its whole content was
    echoed back in the 422."""
    response = client.post("/predict", files=[("files", ("", b"A" * 50_000, "image/png"))])
    assert response.status_code == 422 and len(response.content) < 1_000
    assert response.json()["detail"][0]["input"].endswith("... (50,000 characters)")
    bad_query = client.post("/predict?top_k=many", files=upload(("a.jpg", photo()))).json()["detail"][0]
    assert bad_query["input"] == "many"  # short input is still quoted whole


def test_non_finite_probabilities_are_an_error_not_a_500(client, monkeypatch):
    import fashion_cnn.evaluation.predict as predict_module

    monkeypatch.setattr(predict_module, "predict_logits", lambda model, x: torch.full((len(x), 10), torch.nan))
    response = client.post("/predict", files=upload(("a.jpg", photo())))
    assert response.status_code == 422 and "non-finite probabilities" in response.json()["detail"]


# --- a real server, in a child process on 127.0.0.1 ------------------------------------------------

def test_serving_on_is_printed_only_once_the_port_listens(model_file):
    command = [sys.executable, "-m", "fashion_cnn", "serve", "--model", str(model_file), "--port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*command, str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "serving on" not in done.stdout
    assert done.stderr == f"fashion-cnn: error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"

    port = free_port()
    server = subprocess.Popen([*command, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().startswith(f"model: {model_file} (baseline")
        assert server.stdout.readline() == f"serving on http://127.0.0.1:{port}/ (API docs at /docs)\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:  # no retry
            assert response.status == 200
    finally:
        server.terminate()
        server.wait(30)


PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BODY_HEAD = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
             b"Content-Length: 10000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; "
             b"filename=\"a.png\"\r\n\r\n")


class Trickle:
    """count connections to 127.0.0.1:port that send start (a partial head, or a whole head and the
    beginning of a body) and then a byte at a time, never finishing (slowloris), or with an empty start
    send nothing at all; one the server closes is opened again, as an attacker would."""

    def __init__(self, port: int, count: int, interval: float = 0.3, start: bytes = PARTIAL_HEAD) -> None:
        self.port, self.count, self.interval, self.start = port, count, interval, start
        self.silent = not start
        self.sockets: list[socket.socket | None] = []
        self.reopened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.trickle, daemon=True)

    def connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            sock.sendall(self.start)
            return sock
        except OSError:
            return None

    def trickle(self) -> None:
        while not self.stop.wait(self.interval):
            for i, sock in enumerate(self.sockets):
                try:
                    if sock is None or (self.silent and self.closed(sock)):
                        raise OSError
                    if not self.silent:
                        sock.send(b"X")
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.reopened += 1
                    self.sockets[i] = self.connect()

    @staticmethod
    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False

    def __enter__(self) -> "Trickle":
        self.sockets = [self.connect() for _ in range(self.count)]
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def predict_request(url: str) -> urllib.request.Request:
    body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n' + photo() +
            b"\r\n--b--\r\n")
    return urllib.request.Request(url + "/predict", body, {"Content-Type": "multipart/form-data; boundary=b"})


@pytest.mark.parametrize("start", [PARTIAL_HEAD, b"", BODY_HEAD], ids=["trickling", "silent", "body"])
def test_slow_connections_do_not_lock_out_real_requests(model_file, start):
    """1,100 connections trickling a byte each used up a 1024-descriptor server's descriptors; here 300
    of them against 256 descriptors, while real requests must still be answered promptly. Real requests
    arrive amid bursts of reconnecting ones: closing the oldest waiting connection of a burst closed them.
    Trickled bodies (a head declaring 10 MB) were never closed: every real request timed out."""
    with (server_process(model_file, fd_limit=256) as url,
          Trickle(int(url.rsplit(":", 1)[1]), 300, start=start) as slow):
        for _ in range(3):
            began = time.monotonic()
            with urllib.request.urlopen(predict_request(url), timeout=10) as response:
                assert response.status == 200
            assert time.monotonic() - began < 5
            time.sleep(0.5)
        assert slow.reopened > 0  # the cap closed waiting connections to make room


def test_a_request_head_must_arrive_within_the_header_timeout(model_file):
    with server_process(model_file, header_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            for _ in range(20):  # trickling does not move the deadline
                time.sleep(0.2)
                try:
                    sock.sendall(b"X")
                except OSError:
                    break
            try:
                closed = sock.recv(100) == b""
            except ConnectionResetError:
                closed = True
            assert closed and 0.9 < time.monotonic() - start < 4
        prompt, used = http.client.HTTPConnection("127.0.0.1", port, timeout=10), []
        for _ in range(3):  # a prompt client is served, on one kept-alive connection
            prompt.request("GET", "/health")
            response = prompt.getresponse()
            assert response.status == 200 and response.read() and not response.will_close
            used.append(prompt.sock)
        assert all(sock is used[0] for sock in used)
        prompt.close()


def test_a_request_body_must_keep_a_minimum_rate(model_file):
    """A body is due body_timeout seconds after its head, plus a second for each MIN_BODY_RATE bytes."""
    from fashion_cnn.app.connections import MIN_BODY_RATE

    with server_process(model_file, body_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        lasted = []
        for rate in (10, MIN_BODY_RATE * 2):  # bytes/s: a trickle, then an upload that keeps up
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                start = time.monotonic()
                sock.sendall(BODY_HEAD)
                while time.monotonic() - start < 4:
                    time.sleep(0.1)
                    try:
                        sock.sendall(b"X" * (rate // 10))
                    except OSError:
                        break
                lasted.append(time.monotonic() - start)
        assert 0.9 < lasted[0] < 3 and lasted[1] >= 4


def test_min_confidence_per_request(client, model_file):
    files = upload(("photo.jpg", photo()))
    plain = client.post("/predict", files=files).json()["predictions"][0]
    assert plain["unknown"] is False  # the test model has no rule of its own
    asked = client.post("/predict?min_confidence=0.5", files=files).json()["predictions"][0]
    assert asked["unknown"] is True and asked["class_name"] == "unknown" and asked["class_index"] is None
    assert asked["top_k"] == plain["top_k"] and asked["probability"] == plain["probability"] < 0.5
    for bad in ("-0.1", "1.5", "x"):
        assert client.post(f"/predict?min_confidence={bad}", files=files).status_code == 422


def test_python_api_cli_json_and_web_api_use_the_same_fields(client, model_file):
    """Each result has the CLI --json record's fields, values and all, and each is an attribute of the
    Python API's Prediction with that value; `source` is the web's `filename`, and the web adds the 28x28
    image (and, when asked, its heat map)."""
    predictor = Predictor(model_file, min_confidence=0.5)
    [prediction] = predictor.predict([photo()], top_k=3)
    [record] = as_json([prediction], predictor)["predictions"]
    assert {name: getattr(prediction, name) for name in record} == {
        **record, "top_k": [(r["class_name"], r["probability"]) for r in record["top_k"]],
        "probabilities": list(record["probabilities"].values())}
    [result] = client.post("/predict?min_confidence=0.5&top_k=3", files=upload(("photo.jpg", photo()))).json()[
        "predictions"]
    assert set(FileResult.model_fields) - {"filename", "image", "heatmap"} == set(record) - {"source"}
    for field in set(record) - {"source", "probabilities", "probability", "top_k"}:
        assert result[field] == record[field], field
    assert result["top_k"] == [{"class_name": r["class_name"], "probability": pytest.approx(r["probability"])}
                               for r in record["top_k"]]


STOPPED = 7.5  # seconds the server is stopped: a client the kernel refused retries at 1, 3, 7 and 15 s


async def burst(port: int, count: int, request: bytes, stopped: subprocess.Popen) -> list[tuple[float, bytes]]:
    """count connections to 127.0.0.1:port opened at once while the server is stopped for STOPPED seconds,
    each sending request: (seconds to the whole answer, the answer) for each."""
    async def one() -> tuple[float, bytes]:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            answer = await reader.read()
            return time.monotonic() - start, answer
        finally:
            writer.close()

    clients = asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    await asyncio.sleep(STOPPED)
    stopped.send_signal(signal.SIGCONT)
    return await asyncio.wait_for(clients, 40)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stops the server with SIGSTOP")
def test_a_burst_of_a_thousand_connections_is_answered(model_file):
    """With a listen backlog of 128, 1,000 clients connecting at once got 950-990 answers and the rest
    ConnectionResetError: what did not fit in the kernel's queue was refused (here: left to retry, 15 s
    later). The server is stopped while they connect, the worst case: the kernel alone must hold them."""
    resource = pytest.importorskip("resource")
    if int(Path("/proc/sys/net/core/somaxconn").read_text()) < 1000:
        pytest.skip("net.core.somaxconn caps the listen queue below 1,000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the test needs 1,000 client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    try:
        with served(model_file) as (url, server):
            port = int(url.rsplit(":", 1)[1])
            request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
            server.send_signal(signal.SIGSTOP)
            try:
                answers = asyncio.run(burst(port, 1000, request, server))
            finally:
                server.send_signal(signal.SIGCONT)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = [a for a in answers if isinstance(a, BaseException) or not a[1].startswith(b"HTTP/1.1 200 ")]
    assert not failed, f"{len(failed)} of 1,000 not answered, e.g. {failed[0]!r}"
    late = [seconds for seconds, _ in answers if seconds > STOPPED + 5]
    assert not late, f"{len(late)} of 1,000 answered late (up to {max(late):.1f} s): the kernel refused them"


def test_only_requests_addressed_to_this_server_are_answered(model_file):
    """Any Host was answered: a page whose name was made to resolve to 127.0.0.1 (DNS rebinding) could
    read /model. IP addresses, localhost and the names given are answered, with or without a port."""
    from fashion_cnn.app.serve import host_names

    with TestClient(create_app(model_file, hosts=host_names("127.0.0.1", ["fashion.lan"]))) as client:
        for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "LOCALHOST.", "[::1]:8000", "10.1.2.3",
                     "fashion.lan:80"):
            assert client.get("/model", headers={"host": host}).status_code == 200, host
        refused = client.get("/model", headers={"host": "evil.example:8000"})
        assert refused.status_code == 421 and "--allowed-host evil.example" in refused.json()["detail"]
        assert refused.headers["x-frame-options"] == "DENY"
        for malformed in ("a/b", "[evil.example]", "x:y"):
            assert client.get("/health", headers={"host": malformed}).status_code == 400, malformed
    with TestClient(create_app(model_file, hosts=host_names("127.0.0.1", ["*"]))) as client:
        assert client.get("/model", headers={"host": "evil.example"}).status_code == 200
    assert socket.gethostname().lower() in host_names("0.0.0.0") and "localhost" in host_names("::")


def test_serve_checks_the_host_header(model_file):
    with server_process(model_file, allowed_hosts=["fashion.lan"]) as url:
        for host, status in (("evil.example", 421), ("fashion.lan", 200), ("localhost", 200)):
            request = urllib.request.Request(url + "/health", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert (host, response.status) == (host, status)
            except urllib.error.HTTPError as e:
                assert (host, e.code) == (host, status)
