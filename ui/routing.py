"""Keep every URL on app.py's router.

Streamlit treats a ``pages/`` folder next to the main script as a v1
multipage app until ``st.navigation`` has run once in the server process. A
first visit straight to ``/output`` (a bookmark after a restart) would then run
``pages/output.py`` alone: no sidebar, v1 page names. Each page calls
:func:`ensure_router` first; in that case it switches the server to
``st.navigation`` mode and reruns, so app.py routes the same URL.
"""
from __future__ import annotations

import streamlit as st


def ensure_router() -> None:
    from streamlit.runtime.pages_manager import PagesManager  # private; checked by tests/test_app.py

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
