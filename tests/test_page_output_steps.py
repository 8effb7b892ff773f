"""The Output page says in one line what integrated gradients' completeness tolerance did to the
steps, and where its budget (``GLASSBOX_IG_STEP_BUDGET``, 4x the asked steps) stopped it."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "views" / "output.py")


def test_output_page_says_the_tolerance_raised_steps_up_to_its_budget(monkeypatch):
    monkeypatch.delenv("GLASSBOX_IG_STEP_BUDGET", raising=False)
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["gb_sample"] = "cancer"
    at.session_state["gb_source"] = "sample"
    at.run()
    at.number_input(key="gb_integrated_gradients_steps").set_value(2).run()
    at.number_input(key="gb_integrated_gradients_tolerance").set_value(1e-9).run()
    assert not at.exception, at.exception
    lines = [c.value.replace("\\", "") for c in at.caption if c.value.replace("\\", "").startswith("Steps:")]
    assert len(lines) == 1, [c.value for c in at.caption]  # one line for the method, above its maps
    assert lines[0].startswith("Steps: 2 asked; the completeness tolerance raised ")
    assert "up to 8; stopped by the step budget (8 steps at most), largest completeness error left " in lines[0]
