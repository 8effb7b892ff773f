"""Glassbox — `streamlit run app.py`. The router: st.navigation over pages/views/, shared sidebar.

This ``st.navigation`` call is the app's only router. The views live in
``pages/views/``; the files directly in ``pages/`` are aliases for Streamlit's
v1 multipage mode, which a ``pages/`` folder next to this script turns on for
every script run that starts before the process's first ``st.navigation``
call: it runs ``pages/<name>.py`` for ``/<name>`` without this file. An alias
runs this file, so those runs too get this router, the sidebar and the right
page; without the aliases a first visit straight to ``/output`` would pop
"Page not found".
"""
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="Glassbox", page_icon="🔍", layout="wide")

VIEWS = Path(__file__).resolve().parent / "pages" / "views"
# The start page is served at "/" (Streamlit gives the default page the root URL).
OVERVIEW = st.Page(VIEWS / "overview.py", title="Overview", icon=":material/explore:", url_path="", default=True)
PAGES = [
    OVERVIEW,
    st.Page(VIEWS / "output.py", title="Output", icon=":material/target:", url_path="output"),
    st.Page(VIEWS / "dataset.py", title="Dataset", icon=":material/dataset:", url_path="dataset"),
    st.Page(VIEWS / "structure.py", title="Structure", icon=":material/account_tree:", url_path="structure"),
    st.Page(VIEWS / "training.py", title="Training", icon=":material/monitoring:", url_path="training"),
]


def open_overview() -> None:
    """``/overview`` (a bookmark, a link) opens the start page at ``/``."""
    st.switch_page(OVERVIEW)


navigation = st.navigation(PAGES + [st.Page(open_overview, title="Overview", url_path="overview", visibility="hidden")])

from ui.sidebar import render_sidebar  # noqa: E402  - after st.navigation: importing torch takes seconds
from ui.upload_page import render_pending_upload  # noqa: E402

render_sidebar()
if not render_pending_upload():  # an upload that does not load yet keeps every page on it
    navigation.run()
