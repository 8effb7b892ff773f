"""The two newest flows in a real browser, as a person sees them (issues 22 and 24).

- Generate: picking the causal-LM sample in the sidebar opens the Generate page already explained
  (the key's colour generated, the attribution matrix, the quality table, the selected step's
  attention and logit lens), with no click on Generate.
- Compare: ``/compare?a=cancer@v1&b=cancer@v1`` (a version against itself) runs the comparison as a
  job and shows agreement 100 % with nothing flipped.
"""
from __future__ import annotations

import pytest

from tests.conftest import SCREENSHOTS, choose_option, wait_for_app, wait_for_page_body

pytestmark = pytest.mark.browser


def _no_exception(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()[:800]


def test_the_causal_lm_sample_opens_the_generate_page_already_explained(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/generate")
    page.locator('[data-testid="stMain"] h1', has_text="Generate").wait_for(timeout=240_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    choose_option(page, sidebar.locator('[data-testid="stSelectbox"]', has_text="Sample"),
            "Key copy — causal LM (Generate page)")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_text("Selected step: attention and logit lens").wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_page_body(page, "Generate")
    _no_exception(page)
    text = main.inner_text()
    assert "blue" in text and "Quality of the attribution" in text, text[:2000]
    assert main.locator(".js-plotly-plot").count() >= 2  # the matrix and the selected step's attention
    assert main.get_by_role("button", name="Generate and explain").is_enabled()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy_matrix.png"))
    main.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_keycopy_step.png"))


def test_a_version_compared_with_itself_agrees_everywhere(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/compare?a=cancer%40v1&b=cancer%40v1")
    page.locator('[data-testid="stMain"] h1', has_text="Compare versions").wait_for(timeout=240_000)
    wait_for_page_body(page, "Compare versions")
    main = page.locator('[data-testid="stMain"]')
    main.get_by_role("button", name="Compare").click()
    main.get_by_text("Structure").first.wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    _no_exception(page)
    text = main.inner_text()
    assert "100" in text and "flipped" in text.lower(), text[:3000]
    page.screenshot(path=str(SCREENSHOTS / "compare_self.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "compare_self_figures.png"))
