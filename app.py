"""Glassbox — `streamlit run app.py`. A router only: pages live in pages/."""
from pathlib import Path

import streamlit as st

from ui.sidebar import render_sidebar

st.set_page_config(page_title="Glassbox", page_icon="🔍", layout="wide")

HERE = Path(__file__).parent
PAGES = [
    st.Page(str(HERE / "pages" / "overview.py"), title="Overview", icon=":material/explore:", url_path="overview", default=True),
    st.Page(str(HERE / "pages" / "output.py"), title="Output", icon=":material/target:", url_path="output"),
    st.Page(str(HERE / "pages" / "structure.py"), title="Structure", icon=":material/account_tree:", url_path="structure"),
    st.Page(str(HERE / "pages" / "training.py"), title="Training", icon=":material/monitoring:", url_path="training"),
]

navigation = st.navigation(PAGES)
render_sidebar()
navigation.run()
