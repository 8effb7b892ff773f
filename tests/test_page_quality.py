"""The Output page's Quality tab and quality line (AppTest), and quality findings on the Overview."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.finding import Finding
from ui.quality_view import FINDINGS_KEY

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = str(ROOT / "pages" / "views" / "output.py")
OVERVIEW = str(ROOT / "pages" / "views" / "overview.py")


def _output(sample: str, methods: list[str] | None = None) -> AppTest:
    at = AppTest.from_file(OUTPUT, default_timeout=300)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    at.run()
    if methods:
        at.multiselect(key="gb_methods").set_value(methods).run()
    return at


def _table(at: AppTest):
    return next(d.value for d in at.dataframe if "better than chance by" in d.value.columns)


def test_quality_tab_measures_the_shapes_maps_against_chance_with_the_sample_masks():
    at = _output("shapes", ["integrated_gradients", "grad_cam"])
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert [t.label for t in at.tabs] == ["Maps", "Quality"]
    chosen = at.multiselect(key="gb_q_metrics").value
    assert {"deletion", "insertion", "pointing_game", "relevance_mass", "sparseness"} <= set(chosen)
    assert "randomization" not in chosen and "max_sensitivity" not in chosen  # costly: on demand
    table = _table(at)
    assert len(table) == 2 * len(chosen)
    deletion = table[table["metric"] == "Deletion AUC"]
    insertion = table[table["metric"] == "Insertion AUC"]
    assert (deletion["better than chance by"] > 0).all() and (insertion["better than chance by"] > 0).all()
    assert (deletion["mean"] < deletion["random"]).all() and (insertion["mean"] > insertion["random"]).all()
    pointing = table[table["metric"] == "Pointing game"]
    assert pointing["random"].isna().all() and pointing["mean"].between(0, 1).all()
    charts = [c for c in at.get("plotly_chart")]
    assert len(charts) >= 2  # deletion and insertion curves (besides the maps)
    lines = [m for m in at.markdown if "badge[Deletion AUC" in m.value]
    shown = len(next(m for m in at.multiselect if m.label == "Inputs to show").value)
    assert len(lines) == 2 * shown  # one quality line under each map
    assert all("Insertion AUC" in m.value for m in lines)


def test_quality_tab_runs_the_randomisation_check_on_demand():
    at = _output("shapes", ["saliency"])
    at.multiselect(key="gb_q_metrics").set_value(["randomization"]).run()
    at.number_input(key="gbq_randomization_steps").set_value(2).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = _table(at)
    assert list(table["metric"]) == ["Randomisation check"]
    assert -1 <= float(table["mean"].iloc[0]) <= 1
    assert at.session_state[FINDINGS_KEY][0]  # findings kept for the Overview (model sha256)


def test_quality_tab_of_a_tabular_model_offers_no_localisation_without_masks():
    at = _output("cancer")
    assert not at.exception, at.exception
    chosen = at.multiselect(key="gb_q_metrics").value
    assert "pointing_game" not in chosen and "deletion" in chosen
    table = _table(at)
    assert np.isfinite(table["mean"]).all()


def test_overview_shows_a_quality_finding_from_the_quality_tab():
    import sample_models

    sha = sample_models.load_sample("shapes").sha256
    at = AppTest.from_file(OVERVIEW, default_timeout=300)
    at.session_state["gb_sample"] = "shapes"
    at.session_state["gb_source"] = "sample"
    at.session_state[FINDINGS_KEY] = (sha, [Finding(
        "randomisation_check", "warning", "saliency fails the randomisation check: its maps keep ...")])
    at.run()
    assert not at.exception, at.exception
    assert any("saliency fails the randomisation check" in m.value for m in at.markdown)


@pytest.mark.browser
def test_browser_quality_tab_shows_the_table_and_the_curves(app_url, browser_page):
    from tests.conftest import wait_for_app

    page = browser_page
    page.goto(app_url + "/output")
    page.get_by_text("completeness error").first.wait_for(timeout=180_000)
    wait_for_app(page, 180_000)
    assert page.get_by_text("Deletion AUC").count() >= 1  # the quality line under the maps
    page.get_by_role("tab", name="Quality").click()
    page.get_by_text("Deletion: mean over inputs").wait_for(timeout=180_000)
    assert page.locator('[data-testid="stDataFrame"]').count() >= 1
    assert page.locator('[data-testid="stException"]').count() == 0
