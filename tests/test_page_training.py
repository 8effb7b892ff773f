"""The Training page: AppTest on the default sample, and one real-browser check."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "training.py")
SAMPLE = ROOT / "sample_models" / "shapes"



def _markdown(at) -> list[str]:
    return [m.value for m in at.markdown]


def test_training_page_shows_curves_findings_and_evolution():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    roles = {s.label: s.value for s in at.selectbox}
    assert roles["Training loss"] == "train_loss" and roles["Validation loss"] == "val_loss"
    assert roles["Training metric"] == "train_acc" and roles["Learning rate"] == "lr"
    assert roles["x axis"] == "epoch"
    assert any(m.startswith("ℹ️ **best_epoch**") and "validation loss" in m for m in _markdown(at))
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # curves, weight change, drift correlation, drift maps
    from explain.training.evolution import read_checkpoints

    labels = [c.label for c in read_checkpoints(sorted((SAMPLE / "checkpoints").glob("*.pt")))]
    assert labels[0] == "epoch 1" and len(labels) >= 2
    assert any(c.value == " · ".join(labels) for c in at.caption)  # every checkpoint, oldest first

    # editing the role mapping changes the diagnosis: without a validation loss the best epoch
    # comes from the validation metric
    next(s for s in at.selectbox if s.label == "Validation loss").set_value("(none)").run()
    assert not at.exception
    best = [m for m in _markdown(at) if m.startswith("ℹ️ **best_epoch**")]
    assert best and "validation val\\_acc" in best[0] and "highest" in best[0]  # column names shown literally


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
