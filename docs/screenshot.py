"""The picture of a report in docs/howto/reports.md: the report opened in Chromium (Playwright), one
confusion-matrix cell clicked, the window from the matrix down saved as PNG.

    .venv/bin/python docs/screenshot.py runs/<run>/report.html docs/report.png --cell 6 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cell", type=int, nargs=2, default=(6, 0), metavar=("TRUE", "PREDICTED"),
                        help="the cell to click (default: Shirt predicted as T-shirt/top)")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 1000), metavar=("WIDTH", "HEIGHT"))
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.size[0], "height": args.size[1]})
        page.goto(args.report.resolve().as_uri())
        page.locator(f"table.confusion button[data-true='{args.cell[0]}'][data-pred='{args.cell[1]}']").click()
        page.mouse.move(0, 0)  # no hover outline in the picture
        page.evaluate("document.getElementById('confusion').scrollIntoView()")
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
