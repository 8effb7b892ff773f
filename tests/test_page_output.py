"""The Output page: AppTest for each sample, Playwright for the main flows."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import wait_for_app

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "output.py")


def _run_page(sample: str | None = None, methods: list[str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    if sample:
        at.session_state["gb_sample"] = sample
        at.session_state["gb_source"] = "sample"
    at.run()
    if methods:
        at.multiselect(key="gb_methods").set_value(methods).run()
    return at


@pytest.mark.parametrize("sample", ["shapes", "cancer", "sentiment"])
def test_output_page_explains_each_sample_with_integrated_gradients(sample):
    at = _run_page(sample)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="gb_methods").value == ["integrated_gradients"]
    captions = " ".join(c.value for c in at.caption)
    errors = [float(x) for x in re.findall(r"completeness error ([0-9.e+-]+)", captions)]
    assert errors, captions
    assert max(errors) <= 1e-2  # default steps keep IG complete on the samples


def test_output_page_lists_only_compatible_methods():
    at = _run_page("cancer")
    options = at.multiselect(key="gb_methods").options
    assert "grad_cam" not in options and "occlusion" not in options
    assert "integrated_gradients" in options


def test_output_page_shows_two_methods_side_by_side():
    at = _run_page("shapes", ["integrated_gradients", "saliency"])
    assert not at.exception, at.exception
    assert any("Agreement between methods" in s.value for s in at.subheader)


@pytest.mark.browser
def test_browser_opens_on_explained_sample_then_explains_an_uploaded_torchscript(app_url, browser_page):
    page = browser_page
    start = time.perf_counter()
    page.goto(app_url + "/output")
    page.get_by_text("completeness error").first.wait_for(timeout=120_000)
    first_explanation_s = time.perf_counter() - start
    print(f"\nseconds from opening the app to the first explanation: {first_explanation_s:.1f}")
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=60_000)  # probabilities + the attribution map (drawn lazily)

    page.get_by_text("Upload", exact=True).click()
    uploader = page.locator('[data-testid="stFileUploader"]').first.locator('input[type="file"]')
    uploader.set_input_files(str(ROOT / "sample_models" / "shapes" / "model.torchscript.pt"))
    page.get_by_text("torchscript ·").first.wait_for(timeout=120_000)
    page.get_by_text("completeness error").first.wait_for(timeout=120_000)
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("torchscript").count() >= 1
    page.screenshot(path=str(ROOT / ".screenshots" / "output_torchscript.png"), full_page=True)


@pytest.mark.browser
def test_browser_two_methods_show_two_columns_of_maps(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/output")
    page.get_by_text("completeness error").first.wait_for(timeout=120_000)
    wait_for_app(page)
    methods = page.locator('[data-testid="stMultiSelect"]').first
    methods.click()
    page.get_by_role("option", name="saliency", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_text("Agreement between methods").wait_for(timeout=120_000)
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    headers = page.locator("strong", has_text=re.compile(r"^(integrated_gradients|saliency)$"))
    assert headers.count() >= 2


def _map_charts(at: AppTest) -> list[dict]:
    import json

    out = []
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        if any(t["type"] == "heatmap" for t in spec["data"]) and "colorbar" in spec["data"][-1]:
            out.append({"spec": spec, "config": json.loads(c.proto.config)})
    return out


def test_output_page_image_maps_overlay_grey_copy_and_toggle_views_and_scales():
    import numpy as np

    at = _run_page("shapes")
    assert not at.exception, at.exception
    maps = _map_charts(at)
    assert len(maps) == 4  # one per shown input
    for m in maps:
        image, heat = m["spec"]["data"]
        assert image["type"] == "image" and heat["zmin"] == -heat["zmax"]
        assert "supports" in heat["colorbar"]["title"]["text"]
        assert m["config"]["toImageButtonOptions"]["format"] == "png"
    assert len({m["spec"]["data"][1]["zmax"] for m in maps}) == 1  # shared: one limit for all inputs

    at.radio(key="gb_scale").set_value("per map").run()
    assert len({m["spec"]["data"][1]["zmax"] for m in _map_charts(at)}) == 4

    at.radio(key="gb_view").set_value("map alone").run()
    assert all([t["type"] for t in m["spec"]["data"]] == ["heatmap"] for m in _map_charts(at))

    at.radio(key="gb_view").set_value("side by side").run()
    for m in _map_charts(at):
        assert [t["type"] for t in m["spec"]["data"]] == ["image", "heatmap"]
        assert m["spec"]["data"][1]["xaxis"] == "x2"

    at.radio(key="gb_sign").set_value("absolute").run()
    at.radio(key="gb_figure_format").set_value("svg").run()
    assert not at.exception, at.exception
    for m in _map_charts(at):
        assert m["spec"]["data"][1]["zmin"] == 0 and m["config"]["toImageButtonOptions"]["format"] == "svg"
    assert np.isfinite([m["spec"]["data"][1]["zmax"] for m in _map_charts(at)]).all()


def test_output_page_text_tokens_have_a_legend_and_hover_values():
    at = _run_page("sentiment")
    assert not at.exception, at.exception
    htmls = [h.proto.body for h in at.get("html")]
    tokens = [h for h in htmls if "gb-legend" in h]
    assert tokens and all("supports" in h for h in tokens)
    assert all(re.search(r'title="[^"]+: [+-][0-9]', h) for h in tokens)


@pytest.mark.browser
def test_browser_overlay_toggle_colour_bar_and_token_legend(app_url, browser_page):
    """The view toggle redraws the maps (side by side: the input's image next to each map), every
    map carries its colour bar, the text sample shows the token legend; no exception, no page error."""
    from tests.conftest import SCREENSHOTS

    page = browser_page
    page.goto(app_url + "/output")
    page.get_by_text("red: supports").first.wait_for(timeout=120_000)  # the colour bar's title
    wait_for_app(page)
    maps = page.locator(".js-plotly-plot").filter(has_text="red: supports")
    assert maps.count() == 4  # one map per shown input
    assert maps.first.locator(".colorbar").count() == 1
    page.get_by_text("side by side", exact=True).click()
    wait_for_app(page)
    page.wait_for_function(  # two images per map plot once redrawn: the input, then its map
        "() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.innerText.includes('red: supports'))"
        ".every(p => p.querySelectorAll('.xy2, .x2y2').length > 0)", timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "output_side_by_side.png"), full_page=True)

    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Sentiment — text transformer").click()
    page.locator(".gb-legend").first.wait_for(timeout=120_000)
    wait_for_app(page)
    token = page.locator(".gb-tokens span[title]").first
    assert re.search(r": [+-]\d", token.get_attribute("title"))  # the value on hover
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(SCREENSHOTS / "output_text_tokens.png"), full_page=True)
    assert page.console_errors == []


def _captions(at: AppTest) -> str:
    """Every caption as it reads (Markdown escapes of user text dropped)."""
    return " ".join(c.value for c in at.caption).replace("\\", "")


def test_output_page_grad_cam_layer_is_a_select_box_of_its_candidate_layers_named_under_each_map():
    """The candidates of grad_cam_layers, the default (the last spatial stage) first."""
    from explain.output.methods import get_method
    from sample_models import load_sample

    layers = get_method("grad_cam").param_choices(load_sample("shapes"))["layer"]
    at = _run_page("shapes", ["grad_cam"])
    assert not at.exception, at.exception
    box = next(s for s in at.selectbox if s.label == "layer")
    assert box.options == [f"{layers[0]} (default)", *layers[1:]] and box.value == layers[0]
    assert f"layer: {layers[0]}" in _captions(at)
    box.set_value(layers[1]).run()
    assert not at.exception, at.exception
    assert f"layer: {layers[1]}" in _captions(at) and f"layer: {layers[0]}" not in _captions(at)


def test_output_page_names_the_background_under_each_shap_map():
    """No silent background: each map names what it was compared with."""
    at = _run_page("shapes", ["shap_deep"])
    assert not at.exception, at.exception
    captions = [c.value.replace("\\", "") for c in at.caption if "completeness" in c.value]
    assert len(captions) == 4
    assert all(c.startswith("background: each input's own blurred copy (σ 4 px) · completeness error ")
               for c in captions), captions


def test_output_page_flags_a_completeness_error_above_the_tolerance():
    """Integrated gradients with 2 steps and no tolerance loop: the error is flagged with its remedy."""
    at = _run_page("shapes")
    at.number_input(key="gb_integrated_gradients_steps").set_value(2).run()
    at.number_input(key="gb_integrated_gradients_tolerance").set_value(0.0).run()
    assert not at.exception, at.exception
    flagged = [c.value for c in at.caption if "⚠ completeness error" in c.value]
    assert flagged, _captions(at)
    assert all(c.startswith(":orange[**⚠") and "> tolerance 0.05: raise steps" in c for c in flagged)
    errors = [float(x) for x in re.findall(r"completeness error ([0-9.]+) >", " ".join(flagged))]
    assert errors and min(errors) > 0.05
