"""The Structure page: AppTest for each sample, one real-browser run for the sentiment sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest  # noqa: E402

from sample_models import SAMPLE_NAMES, load_sample  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "structure.py")
TABS = ["Layers", "Graph", "Attention", "Activations & weights", "Layer importance"]


def _run_page(sample: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    at.run()
    return at


@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_structure_page_renders_each_sample(sample):
    at = _run_page(sample)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [t.label for t in at.tabs] == TABS
    layers = at.dataframe[0].value
    assert layers.iloc[0]["layer"] == "(model)"
    assert int(layers.iloc[0]["parameters"]) == load_sample(sample).parameter_count()
    assert int(layers.iloc[0]["FLOPs per input"]) > 0
    infos = [i.value for i in at.info]
    if sample == "sentiment":
        heads = at.dataframe[1].value  # the head summary: one row per layer and head
        assert len(heads) == 2 * heads["head"].nunique() and heads["head"].nunique() >= 2
        assert (heads["first_token_weight"].between(0, 1)).all()
        assert not any("attention" in i.lower() for i in infos)
    else:
        assert any("no attention" in i for i in infos)


def _flops_bars(at: AppTest) -> list[str]:
    """The layer names the page's FLOPs chart draws."""
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("-gb_flops_chart"))
    return sorted(json.loads(chart.proto.spec)["data"][0]["y"])


@pytest.mark.parametrize("sample", ["shapes", "sentiment"])
def test_flops_chart_lists_the_librarys_rows_for_the_shown_depth(sample):
    """explain.structure.layers.flop_chart_rows decides the bars (the report uses it too)."""
    from explain.structure.layers import build_layer_table, filter_rows, flop_chart_rows
    from sample_models import sample_inputs

    at = _run_page(sample)
    table = build_layer_table(load_sample(sample), sample_inputs(sample)["inputs"])
    for depth in (1, 2, table.max_depth):
        at.slider(key="gb_struct_depth").set_value(depth).run()
        assert not at.exception
        expected = flop_chart_rows(filter_rows(table.rows, max_depth=depth), table.total_flops)
        top = sorted(expected, key=lambda r: -r["flops"])[:25]  # the chart's default top 25
        assert _flops_bars(at) == sorted(r["name"] for r in top), depth


@pytest.mark.parametrize("sample", ["shapes", "sentiment"])
def test_overview_structure_and_a_saved_run_show_one_layer_table(sample):
    """explain.structure.layers.layer_frame is the one layer table (issue 21): the Overview's (its
    first input), the Structure page's (every input, at the depth it opens at) and a saved Structure
    run's are equal, output shapes and FLOPs per input."""
    import pandas as pd

    from explain.structure.layers import LAYER_COLUMNS, build_layer_table, layer_frame
    from sample_models import sample_inputs
    from ui.run_view import saved_tables, snapshot_record

    model, inputs = load_sample(sample), sample_inputs(sample)["inputs"]
    structure = _run_page(sample).dataframe[0].value
    overview_at = AppTest.from_file(str(ROOT / "pages" / "views" / "overview.py"), default_timeout=240)
    overview_at.session_state["gb_sample"] = sample
    overview_at.session_state["gb_source"] = "sample"
    overview_at.run()
    assert not overview_at.exception and not overview_at.error
    overview = next(d.value for d in overview_at.dataframe if list(d.value.columns) == list(LAYER_COLUMNS))
    record = snapshot_record("structure", model.name, 1, "Structure", inputs, {"Layers": structure})
    saved = saved_tables(json.loads(json.dumps(record.summary)))["Layers"]  # as the run store keeps it
    table = build_layer_table(model, inputs)
    library = layer_frame(table)
    assert list(structure.columns) == list(LAYER_COLUMNS)
    for name, frame in [("overview", overview), ("saved run", saved), ("library", library)]:
        pd.testing.assert_frame_equal(frame.astype(object).where(frame.notna(), None),
                                      structure.astype(object).where(structure.notna(), None), obj=name)
    model_shape = table.rows[0].output_shape  # the model's output for the probed batch: batch first
    assert model_shape[0] == table.batch_size > 1
    assert structure["output shape (per input)"].iloc[0] == "×".join(str(d) for d in model_shape[1:])


def test_the_reports_layer_table_is_layer_frame():
    """The HTML report's structure section shows `layer_frame` (every layer): the same columns, shapes
    and FLOPs per input as the pages' one layer table."""
    from explain.report.analysis import build_structure_section, describe_structure, layer_rows
    from explain.report.document import round_data
    from explain.structure.layers import FLOPS_COLUMN, LAYER_COLUMNS, SHAPE_COLUMN, build_layer_table, layer_frame
    from sample_models import sample_inputs

    model, example = load_sample("sentiment"), sample_inputs("sentiment")["inputs"][:1]
    section = build_structure_section(model, describe_structure(model, example))
    table = build_layer_table(model, example)
    expected = layer_frame(table, max_depth=max(row.depth for row in table.rows))
    assert section.data["layers"] == round_data({"layers": layer_rows(expected)})["layers"]
    assert list(section.data["layers"][0]) == list(LAYER_COLUMNS) and len(section.data["layers"]) == len(table.rows)
    assert SHAPE_COLUMN in section.body and FLOPS_COLUMN in section.body


def test_layer_filter_and_depth_change_the_table():
    at = _run_page("shapes")
    at.slider(key="gb_struct_depth").set_value(1).run()
    assert set(at.dataframe[0].value["depth"]) == {0, 1}
    at.text_input(key="gb_struct_filter").input("conv").run()
    assert set(at.dataframe[0].value["type"]) == {"Conv2d"}
    assert not at.exception


def test_grad_cam_layer_is_chosen_from_the_candidates_and_named_under_each_map():
    from explain.output.layer_importance import grad_cam_layers
    from sample_models import sample_inputs

    layers = grad_cam_layers(load_sample("shapes"), sample_inputs("shapes")["inputs"][:2])
    at = _run_page("shapes")
    box = next(s for s in at.selectbox if s.label == "Grad-CAM layer")
    assert box.options == [f"{layers[0]} (default)", *layers[1:]] and box.value == layers[0]
    named = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Grad-CAM of layer")]
    assert named == [f"Grad-CAM of layer {layers[0]}"] * 4
    box.set_value(layers[1]).run()
    assert not at.exception
    assert {c.value.replace("\\", "") for c in at.caption if c.value.startswith("Grad-CAM of layer")} == {
        f"Grad-CAM of layer {layers[1]}"}


def test_layer_table_opens_deep_enough_to_show_the_encoder_layers_submodules():
    at = _run_page("sentiment")
    names = {n.strip() for n in at.dataframe[0].value["layer"]}
    assert {"encoder.layers.0.self_attn", "encoder.layers.1.linear1"} <= names
    assert at.slider(key="gb_struct_depth").value == 3


@pytest.mark.browser
def test_structure_page_in_a_browser(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/structure")
    page.get_by_text("Filter by name or type").wait_for(timeout=180_000)
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Sentiment — text transformer").click()
    page.get_by_text("sentiment · ").first.wait_for(timeout=180_000)
    assert page.locator('[data-testid="stDataFrame"]').first.is_visible()  # the layer table
    page.get_by_role("tab", name="Attention").click()
    page.get_by_text("layers.0.self_attn · head 0").first.wait_for(timeout=180_000)  # the layer × head grid
    page.get_by_text("Attention rollout across layers").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    shots = ROOT / ".screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / "test_structure_page_in_a_browser.png"), full_page=True)
