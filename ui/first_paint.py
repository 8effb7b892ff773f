"""The app's first paint, before torch is imported (issue 21, no waiting).

`app.py` draws the router, then imports the pages' glue (`ui.state`, `ui.sidebar`, ...), which
imports torch (seconds), opens the workspace and loads the sample model (seconds more). While that
happens, `first_paint` draws what needs none of it: for the Overview of a sample on a server whose
pages' glue is not imported yet, the page's title, its three columns with a spinner where the
live parts are still coming, and the sample's training curves with their findings (its log read
with pandas, drawn by `explain.viz.training.figure_overview`, as the Overview draws them).
When the block ends (sidebar drawn, model loaded) the preview is cleared and the page runs as
always, so the settled page is the page.

Nothing here may import torch (`tests/test_first_paint.py`), and nothing is drawn while the
workspace has accounts (the sign-in gate comes first). The workspace is opened here
(`open_server_workspace`, the one cached opening `ui.workspace` uses too) so that the check costs
no torch import.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import streamlit as st

from explain.config import database_url, glassbox_home
from explain.workspace import Workspace, open_workspace
from sample_models import SAMPLE_NAMES, sample_dir, sample_registry_files
from ui.text import escape_markdown

log = logging.getLogger("glassbox.ui")

#: the Overview's curves' height (`explain.report.overview.training_figure`'s default)
CURVES_HEIGHT = 420
_SAMPLE_KEY, _SOURCE_KEY, _TRAINING_KEY = "gb_sample", "gb_source", "gb_training_uploads"  # ui.state's keys
DEFAULT_SAMPLE = "shapes"  # ui.state.DEFAULT_SAMPLE (that module imports torch)


@st.cache_resource(show_spinner="Opening the workspace…")
def open_server_workspace(url: str, home: str) -> Workspace:
    """The workspace of this server, opened once per process (`ui.workspace.workspace`, which also takes
    back the jobs of stopped workers: that imports the queue, and with it torch)."""
    ws = open_workspace(url, home)
    ws.seed(sample_registry_files())
    return ws


def preview_sample(is_overview: bool) -> str | None:
    """The sample whose Overview to preview, or None: not the Overview, an upload or training files of
    this session, the pages' glue already imported (the page draws at once), or accounts to sign in to."""
    if not is_overview or "ui.state" in sys.modules:
        return None
    session = st.session_state
    if session.get(_SOURCE_KEY, "sample") != "sample" or session.get(_TRAINING_KEY):
        return None
    name = session.get(_SAMPLE_KEY, DEFAULT_SAMPLE)
    if name not in SAMPLE_NAMES:
        return None
    if open_server_workspace(database_url(), str(glassbox_home())).users.any_accounts():
        return None  # nothing before sign-in
    return name


def sample_curves(name: str):
    """The sample's training curves as the Overview draws them, and the findings, or None when the
    sample has no log (its checkpoints need torch to read)."""
    from explain.finding import sort_findings
    from explain.training.findings import diagnose
    from explain.training.history import merge_histories, read_histories
    from explain.viz.training import figure_overview

    log_file = Path(sample_dir(name)) / "train_log.csv"
    if not log_file.is_file():
        return None
    history = merge_histories(read_histories([str(log_file)]))  # `explain.report.analysis.read_training_history`
    findings = sort_findings(diagnose(history))
    return figure_overview([history], [findings], height=CURVES_HEIGHT), findings


@contextlib.contextmanager
def first_paint(is_overview: bool) -> Iterator[None]:
    """Draw the Overview's torch-free preview for the block (the imports, sign-in, sidebar), then clear it."""
    name = None
    try:
        name = preview_sample(is_overview)
    except Exception:  # the page itself says what is wrong
        log.exception("The first paint's checks failed")
    if name is None:
        yield
        return
    holder = st.empty()
    spinner = contextlib.ExitStack()
    try:
        with holder.container():
            st.title("Overview")
            out_col, struct_col, train_col = st.columns([1, 1.25, 1.1], gap="medium")
            with train_col:
                st.subheader("Training")
                curves = sample_curves(name)
                if curves is not None:
                    fig, findings = curves
                    st.plotly_chart(fig, config={"displayModeBar": False}, key="ov_curves_first_paint")
                    for f in findings:
                        st.markdown(f"{f.icon} **{f.kind}** — {escape_markdown(f.message)}")
            with struct_col:
                st.subheader("Structure")
            with out_col:
                st.subheader("Output")
                spinner.enter_context(st.spinner("Loading the model…"))
    except Exception:  # a preview that cannot draw is no reason to stop the page
        log.exception("The first paint failed")
    try:
        yield
    finally:
        spinner.close()
        holder.empty()
