"""The app's first paint, with no torch imported (issue 21, no waiting).

The pages' glue (`ui.state`, `ui.sidebar`, `ui.jobs`, ...) imports torch, the queue and the model
cache: seconds of a fresh server's first script run, during which the browser would show nothing.
So on the Overview of a sample, while the glue is not imported yet, `first_paint` draws what needs
none of it and the run ends there, with torch never imported in it: the sidebar's Source / Sample
choice (`ui.sample_choice`, the same widgets), the page's title, its three columns, the sample's
training curves with their findings (`explain.viz.training.figure_overview`, as the Overview draws them,
shipped beside the sample as JSON: `explain.report.first_curves`, no pandas) and the sample's saved first view
(`explain.report.first_view`: shipped beside the sample, else saved in the workspace): the row above the
columns, the preprocessing expander, the prediction and the attribution map with its caption, drawn by the
page's own functions (`ui.overview_view`, `ui.map_view.draw_map`: `explain.viz.attribution.attribution_figure`),
so the page that replaces the preview puts the same map in the same place. In a fragment of the preview, a
small browser component (`_DRAWN_JS`) says when the preview's plotly charts are drawn (the browser has loaded
and run Plotly's chunk), which starts a background thread that imports the glue and the Overview's own modules
and seeds the workspace (`start_warm_up`: torch does not take the CPU from the browser's first figure; started
after `DRAWN_WAIT_S` if the browser never says), and from then on ticks every `POLL_S` seconds; the tick after
the import ends runs the app again, and that run is the page as always (it replaces the preview), so the settled page
is the page.

Nothing here may import torch (`tests/test_first_paint.py`), and nothing is drawn while the
workspace has accounts (the sign-in gate comes first). That check reads an SQLite workspace with the
standard library (`explain.workspace.peek.has_accounts`: SQLAlchemy and the tables cost about a second before
the first element); for any other database the workspace is opened here (`open_server_workspace`, the one
cached opening `ui.workspace` uses too, seeded with the samples after the preview, `seeded_workspace`), so that
the check costs no torch import either. The sample's first view shipped beside it is read without the
workspace (`explain.report.first_view.read_shipped_first_view`).
"""
from __future__ import annotations

import ast
import importlib
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from explain.config import database_url, glassbox_home
from explain.digest import digest_bytes
from explain.inputs.reading import InputBatch
from explain.report.first_curves import FIRST_CURVES_FILE, compute_curves, read_shipped_curves
from explain.report.first_view import DEFAULT_METHOD, FirstView, find_first_view, first_view_id, read_shipped_first_view
from explain.workspace.peek import has_accounts
from explain.workspace.roles import Actor
from sample_models import SAMPLE_NAMES, sample_dir, sample_file, sample_inputs, sample_registry_files
from ui.inputs_view import render_preprocessing_of
from ui.map_view import draw_map
from ui.overview_view import (
    INPUT_KEY,
    METHOD_KEY,
    input_label,
    map_title,
    model_caption,
    overview_columns,
    prediction_line,
    render_view_choice,
    render_weights_choice,
)
from ui.sample_choice import SOURCE_KEY, chosen_sample, render_sample_choice, render_source_choice, shipped_first_view
from ui.text import escape_markdown

if TYPE_CHECKING:
    from explain.workspace import Workspace

log = logging.getLogger("glassbox.ui")

_TRAINING_KEY = "gb_training_uploads"  # ui.state's key of the Training page's uploads
#: what app.py imports after the preview (the pages' glue: torch, the workspace's queue, the model cache)
GLUE = ("ui.jobs", "ui.sidebar", "ui.upload_page", "ui.workspace")
OVERVIEW_SCRIPT = Path(__file__).resolve().parents[1] / "pages" / "views" / "overview.py"
POLL_S = 0.5  # how often a preview asks whether the glue is imported (once the browser drew it)
_READY = threading.Event()  # set once the glue is imported (or was before the first run)
_WARM_LOCK = threading.Lock()
_warming: threading.Thread | None = None
_SHOWN_KEY = "gb_first_paint_shown"  # when this session's first preview ran (time.monotonic)


@st.cache_resource(show_spinner="Opening the workspace…")
def open_server_workspace(url: str, home: str) -> Workspace:
    """The workspace of this server, opened once per process (SQLAlchemy and the tables imported: about a second
    of a fresh process, which the preview spends only when `explain.workspace.peek` cannot answer)."""
    from explain.workspace import open_workspace

    return open_workspace(url, home)


@st.cache_resource(show_spinner=False)
def seeded_workspace(url: str, home: str) -> Workspace:
    """The same workspace with the samples registered (`Workspace.seed`, once per process), as the pages use
    it (`ui.workspace.workspace`, which also takes back the jobs of stopped workers: that imports the queue,
    and with it torch); the preview does not wait for the seeding."""
    ws = open_server_workspace(url, home)
    ws.seed(sample_registry_files())
    return ws


def preview_sample(is_overview: bool) -> str | None:
    """The sample whose Overview to preview, or None: not the Overview, an upload or training files of
    this session, the pages' glue already imported (the page draws at once), or accounts to sign in to."""
    if not is_overview or glue_ready():
        return None
    session = st.session_state
    if session.get(SOURCE_KEY, "sample") != "sample" or session.get(_TRAINING_KEY):
        return None
    name = chosen_sample()
    if name not in SAMPLE_NAMES:
        return None
    accounts = has_accounts(database_url())  # an SQLite workspace: read without SQLAlchemy
    if accounts is None:
        accounts = open_server_workspace(database_url(), str(glassbox_home())).users.any_accounts()
    if accounts:
        return None  # nothing before sign-in
    return name


def sample_curves(name: str):
    """The sample's training curves as the Overview draws them (plotly JSON) and the findings: shipped beside
    the sample (`explain.report.first_curves`, read without pandas), else computed from its log; None when the
    sample has no log (its checkpoints need torch to read)."""
    log_file = Path(sample_dir(name)) / "train_log.csv"
    if not log_file.is_file():
        return None
    shipped = read_shipped_curves(log_file, Path(sample_dir(name)) / FIRST_CURVES_FILE)
    return shipped if shipped is not None else compute_curves(log_file)


def sample_first_view(name: str) -> FirstView | None:
    """The sample's saved first view (`explain.report.first_view.find_first_view`: the file beside it, else the
    workspace's run), or None: none saved yet, or this session chose another input or method already."""
    session = st.session_state
    if session.get(INPUT_KEY, 0) != 0 or session.get(METHOD_KEY, DEFAULT_METHOD) != DEFAULT_METHOD:
        return None
    x = sample_inputs(name)["inputs"][:1]  # [1, ...]
    run_id = first_view_id(digest_bytes(sample_file(name).read_bytes()), x)  # the page's model: that file
    shipped = read_shipped_first_view(run_id, shipped_first_view(name))  # no workspace needed
    if shipped is not None:
        return shipped
    ws = open_server_workspace(database_url(), str(glassbox_home()))
    return find_first_view(run_id, None, ws, Actor.local())  # no accounts (`preview_sample`)


def _draw_first_view(name: str, first: FirstView | None) -> None:
    """Above the columns, what the page draws there (the choice of input and method, the preprocessing), from
    the sample's first view; nothing without one."""
    if first is None:
        return
    spec, arrays = first.spec, sample_inputs(name)
    n = len(arrays["inputs"])
    render_view_choice([0], input_label(spec, first.probabilities()[None]), [first.view["method"]],
                       model_caption(name, first.view["format"], spec.modality, n), preview=True)
    render_preprocessing_of(spec, InputBatch.from_arrays(arrays["inputs"], spec), [0])


def _draw_output(name: str, first: FirstView | None) -> None:
    """The Output column as the page draws it for the first view: the prediction and the map with its caption."""
    if first is None:
        st.caption(":material/hourglass_top: Loading the model…")
        return
    spec, attr, labels = first.spec, first.attribution(), sample_inputs(name).get("labels")
    st.markdown(prediction_line(spec, first.probabilities(), labels[0] if labels is not None else None))
    draw_map(spec, attr, 0, map_title(spec, attr), key="ov_map", judged=first.completeness())


def _imports_of(path: Path) -> list[str]:
    """The modules a page's script imports at its top level (what its first run would wait for)."""
    tree = ast.parse(path.read_text())
    names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    return names + [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level]


def _warm_up() -> None:
    """Import the pages' glue and the Overview's modules (torch among them) and seed the workspace, in the
    background."""
    try:
        for name in (*GLUE, *_imports_of(OVERVIEW_SCRIPT)):
            importlib.import_module(name)
        seeded_workspace(database_url(), str(glassbox_home()))
    except Exception:  # the page does it again and says what is wrong
        log.exception("Importing the pages' glue failed")
    finally:
        _READY.set()


def glue_ready() -> bool:
    """Whether the pages' glue is imported, so a page draws at once (imported before any preview, as in a
    test's process, counts)."""
    with _WARM_LOCK:
        if not _READY.is_set() and _warming is None and "ui.state" in sys.modules:
            _READY.set()
    return _READY.is_set()


def start_warm_up() -> None:
    """Start importing the pages' glue in the background, once per process."""
    global _warming
    with _WARM_LOCK:
        if _warming is None and not _READY.is_set():
            _warming = threading.Thread(target=_warm_up, name="glassbox-first-paint-warm-up", daemon=True)
            _warming.start()


def wait_ready(timeout: float | None = None) -> bool:
    """Wait for the background import `start_warm_up` started; whether it ended."""
    return _READY.wait(timeout)


#: the browser's side of `_rerun_when_ready`, one loop a page: once each of the preview's ``charts`` plotly charts
#: holds its drawn plot (Plotly's chunk loaded and run), or after ``wait_ms``, it triggers ``drawn``; then ``tick``
#: every ``poll_ms`` while the preview is on the page. The server's own clock would tick before: every fragment run
#: ends in Streamlit's full garbage collection (0.2-0.3 s of the server after a first run), which took the CPU from
#: the browser's first figure
_DRAWN_JS = """
let latest = null, running = false;
export default function(component) {
  latest = component;
  if (running) return;
  running = true;
  const start = performance.now();
  let said = false, ticks = 0;
  const step = () => {
    const { data, parentElement, setTriggerValue } = latest;
    if (!parentElement.isConnected) { running = false; return; }
    if (!said) {
      const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
      const drawn = charts.filter(c => c.querySelector(".main-svg")).length;
      if (drawn >= data.charts || performance.now() - start > data.wait_ms) { said = true; setTriggerValue("drawn", true); }
      setTimeout(step, said ? data.poll_ms : 50);
    } else {
      setTriggerValue("tick", ++ticks);
      setTimeout(step, data.poll_ms);
    }
  };
  step();
}
"""
DRAWN_WAIT_S = 10.0  # the longest a preview waits for its charts before the import starts anyway
_drawn_signal = st.components.v2.component("glassbox_first_paint_drawn", js=_DRAWN_JS)


def _tick() -> None:
    """The browser's clock (`_DRAWN_JS`): a tick only reruns the preview's fragment."""


@st.fragment(run_every=DRAWN_WAIT_S)
def _rerun_when_ready(charts: int) -> None:
    """The preview's clock, in the browser: it says when it has drawn the preview's ``charts`` plotly charts, which
    starts the import (so torch does not take the CPU from the browser's first figure), then ticks every `POLL_S`;
    a tick after the import runs the app again. A browser that never says gets the import after `DRAWN_WAIT_S`
    and the page on this fragment's own tick (every `DRAWN_WAIT_S`)."""
    if _READY.is_set():
        st.rerun()
    _drawn_signal(key="gb_first_paint_drawn", height=0, on_drawn_change=start_warm_up, on_tick_change=_tick,
                  data={"charts": charts, "wait_ms": DRAWN_WAIT_S * 1000, "poll_ms": POLL_S * 1000})
    shown = st.session_state.setdefault(_SHOWN_KEY, time.monotonic())
    if time.monotonic() - shown >= DRAWN_WAIT_S:
        start_warm_up()


def first_paint(is_overview: bool) -> bool:
    """Draw the Overview's torch-free preview when this run should (see the module's docstring), with the
    clock that imports the pages' glue; True when drawn: the caller ends the run, which reruns itself."""
    name = None
    try:
        name = preview_sample(is_overview)
    except Exception:  # the page itself says what is wrong
        log.exception("The first paint's checks failed")
    if name is None:
        return False
    charts = 0  # the plotly charts drawn: the map (not a text model's tokens) and the curves
    try:
        st.title("Overview")
        first = None
        try:
            first = sample_first_view(name)
        except Exception:  # the page draws it
            log.exception("Reading the first view failed")
        above = st.container()  # the row above the columns: filled once the charts are on their way
        out_col, struct_col, train_col = overview_columns()
        out_col.subheader("Output")
        struct_col.subheader("Structure")
        with train_col:  # first: the shipped curves are the first chart sent, so the browser loads Plotly's chunk
            st.subheader("Training")  # while the map is made
            curves = sample_curves(name)
            if curves is not None:
                charts += 1
                fig, findings = curves
                render_weights_choice([], str, preview=True)  # the page's choice of weights, where it will be
                st.plotly_chart(fig, config={"displayModeBar": False}, key="ov_curves_first_paint")
                for f in findings:
                    st.markdown(f"{f.icon} **{f.kind}** — {escape_markdown(f.message)}")
        with out_col:
            _draw_output(name, first)
            charts += first is not None and first.spec.modality != "text"
        with above:
            _draw_first_view(name, first)
    except Exception:  # a preview that cannot draw is no reason to stop the page
        log.exception("The first paint failed")
    try:  # last: the browser fetches the widgets' code after Plotly's (the sidebar is a place of its own)
        with st.sidebar:  # the sidebar's own choice (`ui.sidebar`): the same widgets keep their values
            st.header("Model")
            render_source_choice(upload=False)
            render_sample_choice()
    except Exception:
        log.exception("The first paint's sidebar failed")
    _rerun_when_ready(charts)
    return True
