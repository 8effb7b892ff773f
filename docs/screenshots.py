"""Regenerate the README screenshots: `python docs/screenshots.py` (needs Debian's chromium).

Starts `streamlit run app.py`, opens each page on the bundled samples in headless
Chromium and saves docs/screenshot-<page>.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, start_streamlit, stop_streamlit, wait_for_app  # noqa: E402

OUT = ROOT / "docs"


def shoot(page, name: str, height: int = 1100) -> None:
    page.wait_for_timeout(1500)  # plotly draws after the script finishes
    page.screenshot(path=str(OUT / f"screenshot-{name}.png"), clip={"x": 0, "y": 0, "width": 1600, "height": height},
                    full_page=True)
    print("wrote", OUT / f"screenshot-{name}.png")


def main() -> None:
    proc, url = start_streamlit()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(180_000)

            page.goto(url)
            page.get_by_text("completeness error").first.wait_for()
            page.get_by_text("best_epoch").first.wait_for()
            wait_for_app(page)
            shoot(page, "overview", 1200)

            page.goto(url + "/output")
            page.get_by_text("completeness error").first.wait_for()
            wait_for_app(page)
            page.locator('[data-testid="stMultiSelect"]').first.click()
            page.get_by_role("option", name="grad_cam", exact=True).click()
            page.keyboard.press("Escape")
            page.get_by_text("Agreement between methods").wait_for()
            wait_for_app(page)
            shoot(page, "output", 1100)

            page.goto(url + "/structure")
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
            page.get_by_role("option", name="Sentiment — text transformer").click()
            page.get_by_text("sentiment · ").first.wait_for()
            wait_for_app(page)
            page.get_by_role("tab", name="Attention").click()
            page.get_by_text("Attention rollout across layers").first.wait_for()
            wait_for_app(page)
            shoot(page, "structure-attention", 1300)

            page.goto(url + "/training")
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
            page.get_by_role("option", name="Shapes — image, residual CNN").click()
            wait_for_app(page)
            page.locator(".js-plotly-plot").first.wait_for()
            shoot(page, "training", 1300)
            browser.close()
    finally:
        stop_streamlit(proc)


if __name__ == "__main__":
    main()
