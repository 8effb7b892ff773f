"""A sample's first view (issue 21, "no waiting"): the Overview's first map and layer table are shipped beside
the sample (`overview_first_view.npz`) and, for a sample file without a matching one, saved once as an Overview
run when a workspace first opens the sample; a server draws them from there without computing (no layer table
measured, no method run)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from explain.output.methods.base import completeness_caption
from explain.report import overview
from explain.report.first_view import FirstView
from explain.structure.layers import build_layer_table, layer_frame
from explain.workspace import Actor
from explain.workspace.records import saved_tables
from sample_models import SAMPLE_NAMES, load_sample, sample_inputs
from ui.sample_choice import shipped_first_view

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "views" / "overview.py")
OP = Actor("cli:tester", operator=True)


def _open_overview() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = "shapes"
    at.session_state["gb_source"] = "sample"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), None)


def _map_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if re.search(r"completeness error", c.value))


def no(*args, **kwargs):
    raise AssertionError("computed although the first view was saved")


def test_the_first_view_is_saved_once_and_a_later_server_draws_it_without_computing(home, monkeypatch, tmp_path):
    _, ws = home
    overview._MEMO.clear()
    monkeypatch.setattr("ui.workspace.shipped_first_view", lambda name: tmp_path / "none.npz")  # none shipped
    first = _open_overview()
    model, x = load_sample("shapes"), sample_inputs("shapes")["inputs"][:1]
    run = ws.runs.open(OP, overview.first_view_id(model, x))
    assert run.info.page == "overview" and run.info.summary[overview.FIRST_VIEW]["steps"] == overview.OVERVIEW_STEPS
    pd.testing.assert_frame_equal(_plain(saved_tables(run.info.summary)["Layers"]),
                                  _plain(layer_frame(build_layer_table(model, x))))
    np.testing.assert_array_equal(run.inputs["inputs"], x)
    _open_overview()
    assert len([r for r in ws.runs.list(OP) if r.id == run.info.id]) == 1  # saved once

    # a server started later: nothing in memory; measuring the layers or explaining would fail
    overview._MEMO.clear()
    monkeypatch.setattr("explain.structure.layers.build_layer_table", no)
    monkeypatch.setattr("explain.output.methods.base.Explainer.explain", no)
    later = _open_overview()
    assert _map_caption(later) == _map_caption(first)  # the same completeness error, seconds, device
    assert later.dataframe[0].value.equals(first.dataframe[0].value)
    assert later.selectbox(key="gb_ov_layer").options == first.selectbox(key="gb_ov_layer").options
    np.testing.assert_allclose(overview.explain_input(model_of(later), x, overview.DEFAULT_METHOD).values,
                               np.asarray(run.results[f"{overview.DEFAULT_METHOD}/values"]))


def model_of(at: AppTest):
    from ui import state

    return state._cached_sample("shapes")


def test_the_shipped_first_views_are_input_0_explained_by_these_weights():
    """What ``python -m sample_models.train`` ships beside each sample is its first view by the shipped file
    (the id every process asks for), and what the page would compute: the map, the prediction, the judgement."""
    for name in SAMPLE_NAMES:
        model, x = load_sample(name), sample_inputs(name)["inputs"][:1]
        first = FirstView.read(shipped_first_view(name))
        assert first.run_id == overview.first_view_id(model, x) and first.sha256 == model.sha256
        np.testing.assert_array_equal(first.x, x)
        assert first.spec == model.spec and first.view["format"] == model.format == "safetensors"
        fresh = overview.explain_input(model, x, overview.DEFAULT_METHOD)
        saved = first.attribution()
        np.testing.assert_allclose(saved.values, fresh.values, rtol=1e-4, atol=1e-6)
        assert saved.params["steps"] == fresh.params["steps"] == overview.OVERVIEW_STEPS
        np.testing.assert_allclose(first.probabilities(), model.predict_proba(x)[0], rtol=1e-5)
        assert first.completeness() == completeness_caption(saved, 0)


def test_a_new_workspace_draws_the_shipped_first_view_without_computing(home, monkeypatch):
    _, ws = home
    overview._MEMO.clear()
    monkeypatch.setattr("explain.structure.layers.build_layer_table", no)
    monkeypatch.setattr("explain.output.methods.base.Explainer.explain", no)
    at = _open_overview()
    first = FirstView.read(shipped_first_view("shapes"))
    attr = first.attribution()
    assert _map_caption(at).startswith(completeness_caption(attr, 0)[0])
    assert f"{attr.seconds:.2f} s for 1 input ·" in _map_caption(at)
    assert at.selectbox(key="gb_ov_layer").options[1:] == first.view["attributable"]
    assert not [r for r in ws.runs.list(OP) if r.id == first.run_id]  # shipped: nothing saved in the workspace


def test_a_shipped_file_counts_only_for_its_own_view_and_an_unreadable_one_is_passed_over(home, tmp_path):
    from explain.report.first_view import find_first_view

    _, ws = home
    shipped = shipped_first_view("cancer")
    first = FirstView.read(shipped)
    assert find_first_view(first.run_id, shipped, ws, Actor.local()).run_id == first.run_id
    assert find_first_view("fv0123456789", shipped, ws, Actor.local()) is None  # another view: none saved either
    broken = tmp_path / "broken.npz"
    broken.write_bytes(shipped.read_bytes()[:100])
    assert find_first_view(first.run_id, broken, ws, Actor.local()) is None  # and the workspace has none
    copy = tmp_path / "copy.npz"
    first.write(copy)
    again = FirstView.read(copy)
    np.testing.assert_array_equal(again.attribution().values, first.attribution().values)
    assert again.summary == first.summary and again.spec == first.spec
