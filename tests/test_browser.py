"""End to end: `fashion-cnn serve` on 127.0.0.1, the page in headless Chromium, an upload, the answer.

Needs Debian's chromium and Playwright for Python (`make setup` installs both as root); skipped otherwise.
"""

import base64
import io
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

pytest.importorskip("fastapi_offline")
sync_api = pytest.importorskip("playwright.sync_api")

from conftest import tiny_arrays  # noqa: E402
from fashion_cnn.predict import Predictor  # noqa: E402
from fashion_cnn.serve import server_process  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium waits on services it cannot reach offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(model_file):
    with server_process(model_file) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page that may only load from 127.0.0.1; it records anything else it tried."""
    page = browser.new_page()
    page.outside = []

    def local_only(route):
        if urlparse(route.request.url).hostname == "127.0.0.1":
            return route.continue_()
        page.outside.append(route.request.url)
        return route.abort()

    page.route("**/*", local_only)
    yield page
    page.close()


def test_upload_shows_the_predicted_class(server, page, model_file, tmp_path):
    image = tmp_path / "item.png"
    Image.fromarray(tiny_arrays(1)[0][0]).save(image)
    expected = Predictor(model_file).predict([image], top_k=5)[0]

    page.goto(server)
    page.set_input_files("#file-input", image)
    card = page.locator(".card").first
    card.locator(".class").wait_for()
    assert card.locator(".class").text_content() == expected.class_name
    assert card.locator(".name").text_content() == "item.png"
    assert card.locator(".bar .label").all_text_contents() == [name for name, _ in expected.top_k]
    assert card.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
    assert page.outside == []


def test_a_sample_click_and_a_bad_file(server, page, tmp_path):
    page.goto(server)
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('model:')")
    if page.locator("#sample-list button").count():  # only where the dataset is installed
        page.locator("#sample-list button").first.click()
        page.locator(".card .class").wait_for()
        assert page.locator(".card .name").text_content().endswith("(test image).png")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file-input", bad)
    page.locator(".card.error").wait_for()
    assert page.locator("#status").text_content().startswith("error 422")
    assert page.outside == []


def test_dropped_files_are_classified(server, page):
    png = io.BytesIO()
    Image.fromarray(tiny_arrays(1)[0][0]).save(png, "PNG")
    page.goto(server)
    page.evaluate("""async (png) => {
        const drop = new DataTransfer();
        drop.items.add(new File(["not an image"], "notes.png", { type: "image/png" }));
        drop.items.add(new File([await (await fetch(png)).blob()], "item.png", { type: "image/png" }));
        document.querySelector("#drop-zone").dispatchEvent(
            new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
    }""", "data:image/png;base64," + base64.b64encode(png.getvalue()).decode())
    page.locator(".card").nth(1).wait_for()
    assert page.locator(".card .name").all_text_contents() == ["notes.png", "item.png"]
    assert page.locator(".card.error .name").all_text_contents() == ["notes.png"]
    assert page.outside == []


def test_api_docs_render_from_local_assets(server, page):
    page.goto(server + "/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "fashion-cnn" in page.locator(".swagger-ui .info .title").text_content()
    assert page.locator(".opblock-summary-path", has_text="/predict").count() == 1
    assert page.outside == []

