"""The report's output sections say what each map was made with and flag a completeness error above
its method's tolerance, as the Output page's captions do (one judgement: completeness_caption)."""
from __future__ import annotations

import numpy as np
import pytest

from explain.report.sections import build_output_section


@pytest.fixture(scope="module")
def shapes():
    from sample_models import load_sample, sample_inputs

    return load_sample("shapes"), np.asarray(sample_inputs("shapes")["inputs"][:2])


def test_a_coarse_integration_is_flagged_in_the_report(shapes):
    model, x = shapes
    section = build_output_section(model, x, None, "integrated_gradients", {"steps": 2, "tolerance": 0.0})
    rows = section.data["inputs"]
    assert section.data["completeness_tolerance"] == 0.05
    flagged = [r for r in rows if r["completeness_exceeded"]]
    assert flagged and all(r["completeness_error"] > 0.05 for r in flagged)
    assert all(r["completeness"].startswith("⚠ completeness error") for r in flagged)
    assert '<p class="sev-warning">⚠' in section.body and "raise steps" in section.body
    assert '<strong class="sev-warning">⚠ completeness error' in section.body  # under the map itself


def test_an_exact_method_is_not_flagged_and_names_its_background(shapes):
    model, x = shapes
    section = build_output_section(model, x, None, "shap_deep", {})
    assert not any(r["completeness_exceeded"] for r in section.data["inputs"])
    assert "sev-warning" not in section.body
    assert section.data["details"] == ["background: each input's own blurred copy (σ 4 px)"]
    assert "background: each input&#x27;s own blurred copy" in section.body


def test_grad_cam_names_its_layer_in_the_report(shapes):
    from explain.output.methods import get_method

    model, x = shapes
    layer = get_method("grad_cam").param_choices(model)["layer"][1]
    section = build_output_section(model, x, None, "grad_cam", {"layer": layer})
    assert section.data["details"] == [f"layer: {layer}"] and f"layer: {layer}" in section.body
