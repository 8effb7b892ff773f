"""Glassbox — `streamlit run app.py`. The router: st.navigation over pages/views/, shared sidebar.

This ``st.navigation`` call is the app's only router. The views live in
``pages/views/``; the files directly in ``pages/`` are aliases for Streamlit's
v1 multipage mode, which a ``pages/`` folder next to this script turns on for
every script run that starts before the process's first ``st.navigation``
call: it runs ``pages/<name>.py`` for ``/<name>`` without this file. An alias
runs this file, so those runs too get this router, the sidebar and the right
page; without the aliases a first visit straight to ``/output`` would pop
"Page not found".

Share links are ``/?run=ID`` and ``/?model=NAME&version=N``: on the root URL such a
query opens the Saved run / Models page instead of the Overview. When the workspace
has accounts, nobody gets past the sign-in form (ui/workspace.py).
"""
from pathlib import Path

import streamlit as st

# A Material icon, not the emoji: an emoji icon imports Streamlit's emoji table, ~0.3-0.5 s of a fresh server's
# first run before anything is drawn (benchmarks/app_latency.py)
st.set_page_config(page_title="Glassbox", page_icon=":material/search:", layout="wide")

VIEWS = Path(__file__).resolve().parent / "pages" / "views"
_query = st.query_params
_link_page = "runs" if _query.get("run") else "models" if _query.get("model") else None
# The start page is served at "/" (Streamlit gives the default page the root URL).
OVERVIEW = st.Page(VIEWS / "overview.py", title="Overview", icon=":material/explore:",
                   url_path="" if _link_page is None else "overview", default=_link_page is None)
RUNS = st.Page(VIEWS / "runs.py", title="Saved runs", icon=":material/bookmarks:",
               url_path="" if _link_page == "runs" else "runs", default=_link_page == "runs")
MODELS = st.Page(VIEWS / "models.py", title="Models", icon=":material/inventory_2:",
                 url_path="" if _link_page == "models" else "models", default=_link_page == "models")
EXPLAIN = [
    OVERVIEW,
    st.Page(VIEWS / "output.py", title="Output", icon=":material/target:", url_path="output"),
    st.Page(VIEWS / "dataset.py", title="Dataset", icon=":material/dataset:", url_path="dataset"),
    st.Page(VIEWS / "structure.py", title="Structure", icon=":material/account_tree:", url_path="structure"),
    st.Page(VIEWS / "training.py", title="Training", icon=":material/monitoring:", url_path="training"),
    st.Page(VIEWS / "generate.py", title="Generate", icon=":material/auto_awesome:", url_path="generate"),
]
TEAM = [
    RUNS, MODELS,
    st.Page(VIEWS / "review.py", title="Review", icon=":material/rate_review:", url_path="review"),
    st.Page(VIEWS / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(VIEWS / "audit.py", title="Audit log", icon=":material/receipt_long:", url_path="audit"),
    st.Page(VIEWS / "queue.py", title="Queue", icon=":material/queue:", url_path="queue"),
]
PAGES = EXPLAIN + TEAM


def open_overview() -> None:
    """``/overview`` (a bookmark, a link) opens the start page at ``/``."""
    st.switch_page(OVERVIEW)


hidden = [] if _link_page else [st.Page(open_overview, title="Overview", url_path="overview", visibility="hidden")]
navigation = st.navigation({"Explain": EXPLAIN + hidden, "Team": TEAM})

from ui.first_paint import first_paint  # noqa: E402  - imports no torch

if first_paint(navigation is OVERVIEW):  # a fresh server's Overview: drawn torch-free, reruns when the glue is in
    st.stop()

from ui.jobs import ensure_worker  # noqa: E402  - after st.navigation: importing torch takes seconds
from ui.sidebar import render_sidebar  # noqa: E402
from ui.upload_page import render_pending_upload  # noqa: E402
from ui.workspace import sign_in_gate  # noqa: E402

if not sign_in_gate():  # accounts exist and nobody is signed in: only the form
    st.stop()
render_sidebar()
ensure_worker()  # the embedded queue worker, unless GLASSBOX_EXTERNAL_WORKER=1
if not render_pending_upload():  # an upload that does not load yet keeps every page on it
    navigation.run()
