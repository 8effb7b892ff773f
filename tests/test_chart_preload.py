"""The browser's Plotly code starts at a session's first script run (`ui.chart_preload`, issue 21): the chunk is
the one Streamlit's front end imports lazily, the script is sent in the same place every run and takes no room, and on a fresh
server the browser asks for the chunk before the page's title is drawn (the map's delta comes after the title)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit import file_util
from streamlit.testing.v1 import AppTest

from tests.conftest import start_streamlit, stop_streamlit
from ui.chart_preload import MARK, plotly_chunk, preload_script


def test_the_chunk_is_the_one_the_front_end_imports_for_a_plotly_chart():
    chunk = plotly_chunk()
    assert chunk is not None and re.fullmatch(r"PlotlyChart\.[\w-]+\.js", chunk)
    js = Path(file_util.get_static_dir(), "static", "js")
    index = next(js.glob("index.*.js")).read_text()
    assert f'"./{chunk}"' in index  # the lazy import's URL, relative to index.*.js as the script's is
    body = preload_script(chunk)
    assert f'import(new URL("{chunk}", s.src).href)' in body and f'id="{MARK}"' in body
    assert f':has(#{MARK}) {{display: none}}' in body


def _preloading_app():
    import streamlit as st

    from ui.chart_preload import preload_charts

    preload_charts()
    st.button("again", key="again")


def test_every_run_sends_the_same_script_first_so_no_later_element_moves():
    at = AppTest.from_function(_preloading_app).run()
    sent = at.get("html")
    assert len(sent) == 1 and sent[0].proto.body == preload_script(plotly_chunk())
    assert sent[0].proto.unsafe_allow_javascript
    at.button(key="again").click().run()
    # a rerun without it moved the button one place up: Streamlit drew the page anew beside stale copies
    again = at.get("html")
    assert len(again) == 1 and again[0].proto.body == sent[0].proto.body


TIMELINE = """
window.__h1 = null;
new MutationObserver(() => { if (window.__h1 === null && document.querySelector('h1')) window.__h1 = performance.now(); })
  .observe(document, {subtree: true, childList: true});
"""


@pytest.mark.browser
def test_a_fresh_servers_browser_fetches_the_chart_code_before_the_title(chromium):
    proc, url = start_streamlit()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        context.add_init_script(TIMELINE)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=300_000)
        fetched = page.evaluate("performance.getEntriesByType('resource').filter(e => e.name.includes('/PlotlyChart.'))"
                                ".map(e => e.startTime)")
        assert len(fetched) == 1  # once: the front end's lazy import found the module loaded
        assert fetched[0] < page.evaluate("window.__h1")  # the map's delta comes after the title's
        hidden = page.evaluate(f"""() => {{ const e = document.getElementById('{MARK}');
            const c = e && e.closest('[data-testid="stElementContainer"]');
            return c ? [getComputedStyle(c).display, c.getBoundingClientRect().height] : null; }}""")
        assert hidden == ["none", 0]  # no gap above the title: the preview stands where the page will
        assert errors == []
    finally:
        context.close()
        stop_streamlit(proc)
