"""A run's report in real browsers, opened from a file:// URL with no server: no console errors, nothing loaded
from anywhere else, and a click on a confusion-matrix cell shows as many images as the cell counts.
Chromium through Playwright and Firefox through Selenium, as tests/test_browser.py drives them; each test
saves a screenshot under its tmp_path and prints where."""

import json
from urllib.parse import urlparse

from test_browser import browser, firefox  # noqa: F401  (fixtures)
from test_report import tiny, train_run  # noqa: F401  (fixtures)


def cells_to_open(run_dir) -> list[tuple[int, int, int]]:
    """(true, predicted, count): the fullest diagonal cell and the fullest confusion."""
    matrix = json.loads((run_dir / "test_report.json").read_text())["confusion_matrix"]
    cells = [(matrix[t][p], t, p) for t in range(len(matrix)) for p in range(len(matrix))]
    diagonal = max(c for c in cells if c[1] == c[2])
    confusion = max(c for c in cells if c[1] != c[2])
    return [(t, p, count) for count, t, p in (diagonal, confusion)]


def cell(t: int, p: int) -> str:
    return f"table.confusion button[data-true='{t}'][data-pred='{p}']"


def test_the_report_works_from_disk_in_chromium(browser, train_run, tmp_path):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors, outside = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/*", lambda route: (outside.append(route.request.url), route.abort())
               if urlparse(route.request.url).scheme not in ("file", "data") else route.continue_())
    page.goto((train_run / "report.html").as_uri())
    for t, p, count in cells_to_open(train_run):
        page.locator(cell(t, p)).click()
        page.locator("#gallery").wait_for()
        assert page.locator("#gallery-items figure").count() == count
        assert page.locator("#gallery-title").text_content().startswith(f"{count} test image")
    page.locator("#gallery").scroll_into_view_if_needed()
    screenshot = tmp_path / "report-chromium.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    page.close()
    assert errors == [] and outside == []


def test_the_report_works_from_disk_in_firefox(firefox, train_run, tmp_path):  # noqa: F811
    errors, outside = [], []
    console = firefox.script.add_console_message_handler(
        lambda entry: errors.append(entry.text) if entry.level == "error" else None)
    thrown = firefox.script.add_javascript_error_handler(lambda entry: errors.append(entry.text))

    def local_only(request):
        if urlparse(request.url).scheme not in ("file", "data"):
            outside.append(request.url)
            request.fail()

    requests = firefox.network.add_request_handler(local_only)
    try:
        firefox.get((train_run / "report.html").as_uri())
        for t, p, count in cells_to_open(train_run):
            firefox.find_element("css selector", cell(t, p)).click()
            assert len(firefox.find_elements("css selector", "#gallery-items figure")) == count
        screenshot = tmp_path / "report-firefox.png"
        firefox.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
    finally:
        firefox.network.remove_request_handler(requests)
        firefox.script.remove_console_message_handler(console)
        firefox.script.remove_javascript_error_handler(thrown)
    assert errors == [] and outside == []
