"""Glassbox — `streamlit run app.py`. A router only: pages live in pages/."""
from pathlib import Path

import streamlit as st

from ui.sidebar import render_sidebar

st.set_page_config(page_title="Glassbox", page_icon="🔍", layout="wide")

HERE = Path(__file__).parent
PAGES = [
    st.Page(str(HERE / "pages" / "output.py"), title="Output", icon="🎯", url_path="output", default=True),
]

navigation = st.navigation(PAGES)
render_sidebar()
navigation.run()
