"""Which model the session explains, as far as a bundled sample goes, and the sidebar's choice of it.

Torch-free (`tests/test_first_paint.py`): the app's first paint draws the sidebar's Source / Sample
choice with the same widgets (keys and arguments, so Streamlit keeps their values) before the pages'
glue and torch are imported; `ui.state` keeps the rest of the selection (uploads, the model itself)
and reads the sample from here.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from explain.report.first_view import FIRST_VIEW_FILE
from sample_models import ALL_SAMPLES, sample_dir

DEFAULT_SAMPLE = "shapes"
SAMPLE_KEY = "gb_sample"  # the chosen sample's name
SOURCE_KEY = "gb_source"  # "sample" | "upload"
SOURCES = ["Sample model", "Upload"]
SAMPLE_LABELS = {
    "shapes": "Shapes — image, residual CNN",
    "cancer": "Breast cancer — tabular MLP",
    "sentiment": "Sentiment — text transformer",
    "keycopy": "Key copy — causal LM (Generate page)",
}


def set_sample(name: str) -> None:
    st.session_state[SAMPLE_KEY] = name
    st.session_state[SOURCE_KEY] = "sample"


def chosen_sample() -> str:
    """The sample this session chose (the default before any choice), whether or not it is in upload mode."""
    return st.session_state.get(SAMPLE_KEY, DEFAULT_SAMPLE)


def _on_sample_change() -> None:
    set_sample(st.session_state["gb_sample_select"])


def render_source_choice(upload: bool) -> str:
    """The sidebar's Source radio (``upload``: Upload is chosen); its label."""
    return st.radio("Source", SOURCES, horizontal=True, key="gb_source_radio", index=1 if upload else 0)


def render_sample_choice() -> str:
    """The sidebar's Sample box; the sample chosen before this run (a change applies through its callback)."""
    current = chosen_sample()
    st.selectbox("Sample", ALL_SAMPLES, index=ALL_SAMPLES.index(current), key="gb_sample_select",
                 format_func=lambda n: SAMPLE_LABELS.get(n, n), on_change=_on_sample_change)
    return current


def shipped_first_view(name: str) -> Path:
    """Where sample ``name``'s Overview first view is shipped (`explain.report.first_view`; it may be absent)."""
    return sample_dir(name) / FIRST_VIEW_FILE
