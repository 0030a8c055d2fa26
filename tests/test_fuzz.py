"""Hostile image files: past crashers (tests/fuzz_corpus) and a bounded fuzz run of every supported format,
through `predict` on the command line, the Python API and the web API. Each bad file must get its own
one-line error while a good file beside it is still predicted. tests/fuzz_campaign.py runs a long campaign."""

from pathlib import Path

import numpy as np
import pytest
from fuzzing import encode, mutants, picture, seeds
from PIL import Image

from fashion_cnn.app.cli import main
from fashion_cnn.evaluation.predict import Predictor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow on odd tags; predict.py too

CORPUS = sorted(p for p in (Path(__file__).parent / "fuzz_corpus").iterdir() if p.name != "README.md")
GOOD = encode(Image.fromarray(picture(90, 120)), "PNG")


def is_answer(p) -> bool:
    """A one-line error, or a finite 28x28 image in [0, 1] with probabilities that sum to 1."""
    if p.error is not None:
        return bool(p.error) and "\n" not in p.error and p.class_name is None
    return (p.image.shape == (28, 28) and bool(np.isfinite(p.image).all()) and p.image.min() >= 0
            and p.image.max() <= 1 and abs(sum(p.probabilities) - 1) < 1e-4)


def test_every_format_is_seeded_and_every_seed_is_predicted(model_file):
    found = seeds()
    assert {name.split("-")[0] for name in found} == {"png", "jpeg", "gif", "bmp", "webp", "tiff"}
    assert {"tiff-16", "tiff-float", "png-16"} <= set(found)
    assert all(p.error is None and is_answer(p) for p in Predictor(model_file).predict(list(found.values())))


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_a_past_crasher_gets_one_error_line_and_the_good_file_is_predicted(path, model_file, tmp_path, capfd):
    good = tmp_path / "good.png"
    good.write_bytes(GOOD)
    code = main(["predict", str(path), str(good), "--model", str(model_file)])
    out, err = capfd.readouterr()  # file descriptors: a decoder's own complaints on stderr count too
    assert code == 1
    assert err.startswith(f"fashion-cnn: error: {path}: ") and err.count("\n") == 1
    assert len(out.splitlines()) == 2 and out.splitlines()[1].startswith(f"{good}: ")


def test_mutated_files_of_every_format_never_crash_predict(model_file):
    files = mutants(600, seed=0)
    predictions = Predictor(model_file).predict([data for _, data in files] + [GOOD], errors="report")
    assert len(predictions) == len(files) + 1
    for (name, _), p in zip(files, predictions):
        assert is_answer(p), name
    assert predictions[-1].error is None
    assert 0 < sum(p.error is None for p in predictions[:-1]) < len(files)  # the mutations did something


# --- the web API -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(model_file):
    pytest.importorskip("fastapi_offline")
    from fastapi.testclient import TestClient

    from fashion_cnn.app.serve import create_app

    with TestClient(create_app(model_file)) as client:
        yield client


def post(client, files: list[tuple[str, bytes]]):
    return client.post("/predict", files=[("files", (name, data, "application/octet-stream"))
                                          for name, data in files])


def check_answered(response, names: list[str]) -> None:
    """200, one result per file, each a one-line error or a class, and the last (good) file classified."""
    assert response.status_code == 200, response.text[:500]
    results = response.json()["predictions"]
    assert [r["filename"] for r in results] == names
    for r in results:
        assert (r["error"] is None) == (r["class_name"] is not None), r["filename"]
        assert r["error"] is None or "\n" not in r["error"]
    assert results[-1]["error"] is None


def test_past_crashers_through_the_web_api(client):
    response = post(client, [(p.name, p.read_bytes()) for p in CORPUS] + [("good.png", GOOD)])
    check_answered(response, [p.name for p in CORPUS] + ["good.png"])
    assert all(r["error"] for r in response.json()["predictions"][:-1])
    assert client.get("/health").status_code == 200


def test_mutated_files_of_every_format_never_crash_the_web_api(client):
    files = mutants(150, seed=1)
    for start in range(0, len(files), 15):  # 15 mutants and a good file per request: the 16-file limit
        batch = [(f"{i}-{name}", data) for i, (name, data) in enumerate(files[start:start + 15], start)]
        check_answered(post(client, [*batch, ("good.png", GOOD)]), [name for name, _ in batch] + ["good.png"])
