"""Which layers a FLOPs chart lists (explain.structure.layers.flop_chart_rows): one rule for page and report."""
from __future__ import annotations

import numpy as np
import pytest

from explain.structure.layers import LayerRow, build_layer_table, filter_rows, flop_chart_rows


def _row(name: str, flops: int | None, type_: str = "Linear") -> LayerRow:
    depth = 0 if not name else name.count(".") + 1
    return LayerRow(name, type_, depth, None, 0, 0, 0, 0, flops, None)


def test_leaves_with_flops_each_counted_once():
    rows = [_row("", 100), _row("encoder", 90), _row("encoder.layers.0", 45),  # encoder.layers: a container
            _row("encoder.layers.0.attn", 30), _row("encoder.layers.0.attn.out_proj", None),  # never ran alone
            _row("encoder.layers.0.fc", 15), _row("encoder.layers.0.norm", 0), _row("encoder.layers.1", 45),
            _row("head", 10), _row("act", None)]
    charted = flop_chart_rows(rows, 100)
    assert [r["name"] for r in charted] == ["encoder.layers.0.attn", "encoder.layers.0.fc", "encoder.layers.1", "head"]
    assert [r["flop_share"] for r in charted] == [0.3, 0.15, 0.45, 0.1]
    assert charted[0] == {"name": "encoder.layers.0.attn", "type": "Linear", "flops": 30, "flop_share": 0.3}
    # the page charts the rows its table shows: at depth 1 the grandparent stands for its layers
    shown = [r for r in rows if r.depth <= 1]
    assert [r["name"] for r in flop_chart_rows(shown, 100)] == ["encoder", "head"]
    # the report passes describe_layers' dicts; an unknown total gives no share
    as_dicts = [{"name": r.name, "type": r.type, "flops": r.flops} for r in rows]
    assert [r["name"] for r in flop_chart_rows(as_dicts, None)] == [r["name"] for r in charted]
    assert all(r["flop_share"] is None for r in flop_chart_rows(as_dicts, None))
    assert flop_chart_rows([_row("", 5)], 5) == []  # the model itself is never a bar


def test_the_sentiment_transformer_is_charted_without_double_counting():
    from sample_models import load_sample, sample_inputs

    model = load_sample("sentiment")
    table = build_layer_table(model, sample_inputs("sentiment")["inputs"][:4])
    for depth in range(table.max_depth + 1):
        charted = flop_chart_rows(filter_rows(table.rows, max_depth=depth), table.total_flops)
        names = [r["name"] for r in charted]
        assert not any(b.startswith(a + ".") for a in names for b in names), (depth, names)
        if depth:
            assert np.isclose(sum(r["flop_share"] for r in charted), 1.0, atol=1e-3), (depth, names)
    all_rows = flop_chart_rows(table.rows, table.total_flops)
    assert "encoder.layers.0.self_attn" in [r["name"] for r in all_rows]  # its out_proj never runs by itself


def test_the_report_charts_the_same_rows():
    from explain.report.analysis import build_structure_section, describe_structure
    from explain.structure.layers import describe_layers
    from sample_models import load_sample, sample_inputs

    model = load_sample("sentiment")
    example = sample_inputs("sentiment")["inputs"][:1]
    structure = describe_structure(model, example)
    section = build_structure_section(model, structure)
    expected = flop_chart_rows(describe_layers(model, example), structure["total_flops"])
    assert section.data["flop_chart"] == [r["name"] for r in expected]
    assert "encoder.layers.1.self_attn" in section.data["flop_chart"] and len(section.figures) == 1


def _tidy_template(monkeypatch, template):
    import plotly.io as pio

    monkeypatch.setattr(pio.templates, "default", pio.templates.default)  # restored after the test
    if template == "streamlit":
        pytest.importorskip("streamlit")  # registers the template
    pio.templates.default = template


@pytest.mark.parametrize("template", ["none", "streamlit"])
@pytest.mark.parametrize("n", [1, 7, 25])
def test_flops_chart_title_and_axis_title_keep_clear_of_the_ticks(template, n, monkeypatch):
    """Issue 20 item 7: the FLOPs chart's titles sat over its ticks (the app's template grows no margin:
    the x title was drawn on the tick labels, b=10). The chart title is centred in a top margin that
    holds it, the axis title is below its tick labels in a bottom margin that holds both."""
    from explain.viz.labels import LINE_HEIGHT, TITLE_SIZE, title_margin
    from explain.viz.structure import FLOPS_TICK_SIZE, figure_flops

    _tidy_template(monkeypatch, template)
    rows = [{"name": f"encoder.layers.{i}.linear", "type": "Linear", "flops": 10 + i, "flop_share": 0.01 * (i + 1)}
            for i in range(n)]
    fig = figure_flops(rows)
    layout = fig.layout
    assert layout.title.text == "Share of FLOPs" and layout.title.yref == "container"
    assert layout.title.y is None and layout.title.yanchor is None  # auto: centred in the top margin
    assert layout.margin.t >= title_margin("Share of FLOPs") >= TITLE_SIZE * LINE_HEIGHT
    assert layout.xaxis.automargin is True and layout.yaxis.automargin is True
    assert layout.xaxis.title.text == "% of model FLOPs" and layout.xaxis.title.standoff >= 4
    assert layout.margin.b >= (FLOPS_TICK_SIZE + TITLE_SIZE) * LINE_HEIGHT + layout.xaxis.title.standoff
    plot = layout.height - layout.margin.t - layout.margin.b
    assert plot >= 20 * n  # the bars keep their room: the margins come on top
