"""Figure downloads: plotly's own export button (PNG or SVG, drawn in the browser, no server-side
renderer), configured the same way for every figure that offers it."""
from __future__ import annotations

import re

import streamlit as st

FIGURE_FORMATS = ("png", "svg")
FORMAT_KEY = "gb_figure_format"


def figure_config(name: str) -> dict:
    """``st.plotly_chart(config=...)`` for a figure that can be downloaded: only the camera button,
    which saves ``<name>.<format>`` in the format chosen with `figure_format_choice` (PNG by default)."""
    fmt = st.session_state.get(FORMAT_KEY, "png")
    if fmt not in FIGURE_FORMATS:
        fmt = "png"
    filename = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
    return {
        "displaylogo": False,
        "modeBarButtons": [["toImage"]],
        "toImageButtonOptions": {"format": fmt, "filename": filename, "scale": 2 if fmt == "png" else 1},
    }


def figure_format_choice() -> str:
    """The format the figures' camera buttons save (PNG or SVG)."""
    return st.radio("Figure format (the camera button above each figure)", FIGURE_FORMATS, horizontal=True,
                    key=FORMAT_KEY, format_func=str.upper)
