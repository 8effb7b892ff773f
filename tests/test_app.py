"""app.py, the router: every page is reachable, and deep links work on a fresh server."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import start_streamlit, stop_streamlit, wait_for_app

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"overview": "Overview", "output": "Output", "structure": "Structure", "training": "Training"}


def test_app_opens_on_overview_with_the_sidebar():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    assert [h.value for h in at.sidebar.header][:1] == ["Model"]
    assert at.sidebar.selectbox(key="gb_sample_select").value == "shapes"
    assert any(t.value == "Overview" for t in at.title)


def test_every_page_file_is_in_the_navigation():
    app = (ROOT / "app.py").read_text()
    on_disk = {p.stem for p in (ROOT / "pages").glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(PAGES)
    for url in PAGES:
        assert f'url_path="{url}"' in app


@pytest.mark.browser
def test_deep_link_on_a_fresh_server_uses_the_router(chromium):
    """Streamlit would run pages/structure.py alone (v1 multipage) before app.py ever ran."""
    proc, url = start_streamlit()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url + "/structure")
        page.get_by_text("Filter by name or type").wait_for(timeout=180_000)
        wait_for_app(page)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert [line for line in nav.splitlines() if line in PAGES.values()] == list(PAGES.values())
        assert page.locator('[data-testid="stSidebar"]').get_by_text("Model", exact=True).is_visible()
    finally:
        context.close()
        stop_streamlit(proc)
