"""app.py, the router: every page is reachable, and every first visit on a fresh server gets it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import SCREENSHOTS, start_streamlit, stop_streamlit, wait_for_app

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"overview": "Overview", "output": "Output", "dataset": "Dataset", "structure": "Structure", "training": "Training",
         "generate": "Generate", "runs": "Saved runs", "models": "Models", "review": "Review", "compare": "Compare",
         "audit": "Audit log", "queue": "Queue"}
TITLES = {"overview": "Overview", "output": "Output explanations", "dataset": "Dataset explanations", "structure": "Structure",
          "training": "Training", "generate": "Generate", "runs": "Saved runs", "models": "Models", "review": "Review",
          "compare": "Compare versions", "audit": "Audit log", "queue": "Job queue"}


def test_app_opens_on_overview_with_the_sidebar():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    assert [h.value for h in at.sidebar.header][:1] == ["Model"]
    assert at.sidebar.selectbox(key="gb_sample_select").value == "shapes"
    assert any(t.value == "Overview" for t in at.title)


def test_every_view_is_in_the_navigation_and_every_alias_runs_the_router():
    """Views live in pages/views/; pages/<name>.py only hands /<name> to app.py (Streamlit's v1 mode)."""
    app = (ROOT / "app.py").read_text()
    views = {p.stem for p in (ROOT / "pages" / "views").glob("*.py")}
    aliases = {p.stem for p in (ROOT / "pages").glob("*.py")}
    assert views == aliases == set(PAGES)
    for name in PAGES:
        assert f'VIEWS / "{name}.py"' in app
        assert f'"{name}"' in app  # its url_path (/overview too: a hidden page that opens the start page at /)
        alias = ast.parse((ROOT / "pages" / f"{name}.py").read_text())
        calls = [n for n in ast.walk(alias) if isinstance(n, ast.Call)]
        assert any(getattr(c.func, "attr", "") == "run_path" for c in calls)
        assert '"app.py"' in (ROOT / "pages" / f"{name}.py").read_text()


def _state(page) -> dict:
    return page.evaluate("""() => ({
        nav: (document.querySelector('[data-testid="stSidebarNav"]') || {}).innerText || '',
        model: [...document.querySelectorAll('[data-testid="stSidebar"] h2')].some(h => h.innerText.trim() === 'Model'),
        title: (document.querySelector('[data-testid="stMain"] h1') || {}).innerText || '',
        notFound: document.body.innerText.includes('Page not found'),
    })""")


@pytest.mark.browser
def test_eight_first_visitors_on_a_fresh_server_all_get_the_router(chromium):
    """The first script run of a process is in Streamlit's v1 mode (a pages/ folder exists); the rest race it.

    Every visitor, at / or straight at a page, must get the full app: the Model sidebar, the four
    pages in the navigation, the page it asked for, and no "Page not found".
    """
    visits = ["structure", "", "output", "overview", "training", "", "overview", "output"]  # a deep link first
    proc, url = start_streamlit()
    contexts = [chromium.new_context(viewport={"width": 1400, "height": 1000}) for _ in visits]
    try:
        pages = [c.new_page() for c in contexts]
        for page, path in zip(pages, visits):  # all at once: no waiting between the requests
            page.goto(f"{url}/{path}", wait_until="commit")
        for page, path in zip(pages, visits):
            name = path or "overview"
            page.locator('[data-testid="stMain"] h1', has_text=TITLES[name]).first.wait_for(timeout=300_000)
            wait_for_app(page, timeout_ms=300_000)
            state = _state(page)
            nav = [line.strip() for line in state["nav"].splitlines() if line.strip() in PAGES.values()]
            assert nav == list(PAGES.values()), (path, state)
            assert state["model"], (path, state)
            assert state["title"].startswith(TITLES[name]), (path, state)
            assert not state["notFound"], (path, state)
            assert page.locator('[data-testid="stException"]').count() == 0, path
        overview = pages[visits.index("")]
        SCREENSHOTS.mkdir(exist_ok=True)
        overview.screenshot(path=str(SCREENSHOTS / "fresh_server_overview.png"), full_page=True)
        assert pages[visits.index("overview")].url.rstrip("/") == url  # /overview opens the start page at /
    finally:
        for context in contexts:
            context.close()
        stop_streamlit(proc)
