"""One attribution figure (issue 21): the Output page, the Overview and the report draw an `Attribution`
through `viz.attribution_figure`, with one colour-limit rule and one top-k, so the three show the same."""
from __future__ import annotations

import numpy as np
import pytest
import streamlit as st

import sample_models
import ui.attribution_view as view
from explain.output.methods import get_method
from explain.report.sections import build_output_section
from explain.viz import attribution as viz

ROWS = 3


@pytest.fixture
def drawn(monkeypatch):
    """What the page functions hand to Streamlit: plotly figures by key, HTML in order."""
    out = {"figures": {}, "html": []}
    monkeypatch.setattr(st, "plotly_chart", lambda fig, config=None, key=None, **kw: out["figures"].__setitem__(key, fig))
    monkeypatch.setattr(st, "html", lambda body, **kw: out["html"].append(body))
    return out


def _three(name: str, drawn: dict):
    model = sample_models.load_sample(name)
    x = sample_models.sample_inputs(name)["inputs"][:ROWS]
    attr = get_method("saliency").explain(model, x, use_cache=False)
    view.render_grid(model, [attr], list(range(ROWS)), model.predict_proba(x), None)  # the Output page
    page = dict(drawn["figures"]), list(drawn["html"])
    drawn["figures"].clear(), drawn["html"].clear()
    view.render_attribution(model, attr, 0, "saliency → x", key="ov_map")  # the Overview
    overview = dict(drawn["figures"]), list(drawn["html"])
    report = build_output_section(model, x, None, "saliency", {"use_cache": False})
    return model, attr, page, overview, report


def _bars(fig) -> tuple[list, list]:
    return list(fig.data[0].x), list(fig.data[0].y)


def test_tabular_bars_are_the_same_on_the_page_the_overview_and_the_report(drawn):
    _, attr, (page, _), (overview, _), report = _three("cancer", drawn)
    maps = [page[f"map_saliency_{r}_of_1"] for r in range(ROWS)]
    assert [len(_bars(f)[0]) for f in maps] == [viz.TOP_K] * ROWS  # one top-k everywhere
    assert [_bars(f) for f in maps] == [_bars(f) for f in report.figures]
    assert _bars(overview["ov_map"]) == _bars(maps[0])
    assert len(report.data["inputs"][0]["top_features"]) == viz.TOP_K


def test_image_maps_have_one_colour_limit_rule(drawn):
    _, attr, (page, _), (overview, _), report = _three("shapes", drawn)
    heats = [page[f"map_saliency_{r}_of_1"].data[-1] for r in range(ROWS)]
    limit = heats[0].zmax
    assert {h.zmax for h in heats} == {limit} == {overview["ov_map"].data[-1].zmax}
    assert report.data["color_limit"] == pytest.approx(limit, rel=1e-5)  # the report's data is rounded
    assert limit == pytest.approx(viz.shared_scale(viz.image_maps(attr)))  # shared by the inputs shown
    for r, h in enumerate(heats):
        np.testing.assert_allclose(np.asarray(h.z), viz.image_maps(attr)[r])


def test_text_tokens_are_the_same_html_everywhere(drawn):
    _, _, (_, page_html), (_, overview_html), report = _three("sentiment", drawn)
    assert len(page_html) == ROWS and overview_html == page_html[:1]
    assert all(h in report.body for h in page_html)
