"""The Training page: AppTest on the default sample, and one real-browser check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "training.py")
SAMPLE = ROOT / "sample_models" / "shapes"



def _markdown(at) -> list[str]:
    return [m.value for m in at.markdown]


def _chart_data(at, key: str) -> list[dict]:
    """The plotly traces of the chart placed with ``key``."""
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("-" + key))
    return json.loads(chart.proto.spec)["data"]


def test_training_page_shows_curves_findings_and_evolution():
    from streamlit.testing.v1 import AppTest

    from explain.finding import sort_findings
    from explain.training.checkpoints import read_checkpoints
    from explain.training.evolution import compute_weight_changes
    from explain.training.findings import diagnose
    from explain.training.history import read_history

    at = AppTest.from_file(PAGE, default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    roles = {s.label: s.value for s in at.selectbox}
    assert roles["Training loss"] == "train_loss" and roles["Validation loss"] == "val_loss"
    assert roles["Training metric"] == "train_acc" and roles["Learning rate"] == "lr"
    assert roles["x axis"] == "epoch"
    # the findings are the library's, worst first (explain.finding.sort_findings), with their evidence
    expected = sort_findings(diagnose(read_history(SAMPLE / "train_log.csv")))
    evidence = json.loads(at.json[0].value)
    assert [e["kind"] for e in evidence] == [f.kind for f in expected] and "best_epoch" in [f.kind for f in expected]
    assert [e["epochs"] for e in evidence] == [f.epochs for f in expected]
    assert evidence == [f.to_dict() for f in expected]  # Finding's one plain form, as the CLI and the report give it
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # curves, weight change, drift correlation, drift maps
    # every checkpoint, in the library's training order (the final one last)
    ckpts = read_checkpoints((SAMPLE / "checkpoints").glob("*.pt"))
    labels = [c.label for c in ckpts]
    assert labels[0] == "epoch 1" and len(labels) >= 2
    assert _chart_data(at, "gb_train_weights")[0]["x"] == compute_weight_changes(ckpts).intervals
    assert _chart_data(at, "gb_drift_corr")[0]["x"] == labels

    # editing the role mapping changes the diagnosis: without a validation loss the best epoch
    # comes from the validation metric
    next(s for s in at.selectbox if s.label == "Validation loss").set_value("(none)").run()
    assert not at.exception
    best = [e for e in json.loads(at.json[0].value) if e["kind"] == "best_epoch"]
    assert best and best[0]["evidence"]["series"] == "validation val_acc"
    line = next(m for m in _markdown(at) if "**best_epoch**" in m)
    assert "validation val\\_acc" in line and "highest" in line  # column names shown literally


@pytest.mark.browser
def test_training_page_in_a_browser(app_url, browser_page):
    from conftest import SCREENSHOTS, wait_for_app

    page = browser_page
    page.set_viewport_size({"width": 1400, "height": 3000})  # the whole page in one screenshot
    page.goto(app_url + "/training")
    page.get_by_text("Attribution drift").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=240_000)
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_text("best_epoch").count() >= 1
    curves = page.locator(".js-plotly-plot").first
    assert curves.get_by_text("best").count() >= 1  # the finding is marked on the chart
    assert curves.get_by_text("validation loss (val_loss)").count() == 1
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "training_page.png"), full_page=True)

    # uploads: a broken log gets a one-line reason, the good one is still diagnosed
    page.get_by_text("Your training logs and checkpoints").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Training logs")
    rows = "".join(f"{e},{1 / (e + 1):.4f},{1.1 / (e + 1) + 0.01 * max(0, e - 20):.4f}\n" for e in range(40))
    uploader.locator('input[type="file"]').set_input_files([
        {"name": "broken.jsonl", "mimeType": "application/json", "buffer": b'{"loss": 1.0}\n{"loss": oops}\n'},
        {"name": "keras.csv", "mimeType": "text/csv", "buffer": ("epoch,loss,val_loss\n" + rows).encode()},
    ])
    page.get_by_text("broken.jsonl: line 2 is not valid JSON").first.wait_for()
    page.get_by_text("Curves from your uploads").first.wait_for()
    page.get_by_text("Overfitting from epoch").first.wait_for()
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(SCREENSHOTS / "training_page_uploads.png"), full_page=True)
    assert not page.console_errors, page.console_errors


def test_two_uploaded_logs_are_runs_side_by_side_with_findings_per_run():
    import training_curves as curves
    from streamlit.testing.v1 import AppTest

    from explain.training.findings import diagnose

    healthy, overfit = curves.healthy(0), curves.overfitting(1)
    assert "overfitting" not in {f.kind for f in diagnose(healthy)}  # the known answers
    assert "overfitting" in {f.kind for f in diagnose(overfit)}
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.run()
    logs = next(u for u in at.get("file_uploader") if u.label == "Training logs")
    logs.set_value([("healthy.csv", curves.to_csv(healthy), "text/csv"),
                    ("overfit.csv", curves.to_csv(overfit), "text/csv")])
    at.run()
    assert not at.exception, at.exception
    assert at.radio(key="gb_train_mode").value == "runs"  # the default for two logs of the same series
    traces = _chart_data(at, "gb_train_runs")
    titles = {t["legendgroup"]: t["legendgrouptitle"]["text"] for t in traces}
    assert sorted(titles.values()) == ["healthy", "overfit"]  # one legend group per run, named by its file
    expanders = [e.label for e in at.expander if e.label.startswith("Findings · ")]
    assert expanders == ["Findings · healthy", "Findings · overfit"]
    per_run = {e.label: " ".join(m.value for m in e.markdown) for e in at.expander if e.label in expanders}
    assert "**overfitting**" in per_run["Findings · overfit"]
    assert "**overfitting**" not in per_run["Findings · healthy"]

    at.radio(key="gb_train_mode").set_value("merge").run()  # the other reading is one click away
    assert not at.exception, at.exception
    assert any(c.proto.id.endswith("-gb_train_curves") for c in at.get("plotly_chart"))
