"""The browser's Plotly code, started at a session's first script run (issue 21, no waiting).

Streamlit's front end loads its Plotly chart code (one ~4.7 MB chunk, `PlotlyChart.<hash>.js`) only when the
first `st.plotly_chart` reaches it, then runs it: one long task of the browser's main thread (1-4 s on a busy
2-core machine), which began only after the script had imported the app's modules (the workspace's
SQLAlchemy, numpy: 1-2 s of a fresh server's first run) and drawn the page above its first figure.
`preload_charts`, app.py's first element, sends a script that imports that chunk at once, by the URL the
front end's own lazy import resolves (beside its `index.*.js`, the app's base path kept), so the module is
fetched and run once, while the script imports. It draws nothing: a style hides its element's container
(no gap above the page's first element). Every run sends the same element in the same place: a run without it
would move every later element one place up, and Streamlit would draw the whole page anew beside the old one's
stale copies (two of each until the run ends); the browser keeps the element, so its script runs once a page load.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import streamlit as st
from streamlit import file_util

MARK = "gb-chart-preload"  # the id that the hiding style finds the element by


@functools.cache
def plotly_chunk() -> str | None:
    """The file name of the installed Streamlit's Plotly chart chunk, or None (a Streamlit without one)."""
    found = sorted(Path(file_util.get_static_dir(), "static", "js").glob("PlotlyChart.*.js"))
    return found[0].name if found else None


def preload_script(chunk: str) -> str:
    """The HTML that imports ``chunk`` beside the front end's ``index.*.js`` and hides its own container."""
    return (f'<style>[data-testid="stElementContainer"]:has(#{MARK}) {{display: none}}</style>'
            f'<span id="{MARK}"></span>'
            "<script>(() => { const s = document.querySelector('script[src*=\"/static/js/index.\"]');"
            f" if (s) import(new URL({json.dumps(chunk)}, s.src).href).catch(() => {{}}); }})();</script>")


def preload_charts() -> None:
    """Send `preload_script` (every run, the same element); nothing when the chunk is not found."""
    chunk = plotly_chunk()
    if chunk is None:
        return
    st.html(preload_script(chunk), unsafe_allow_javascript=True)
