"""Your own model in the page, as it comes: no spec typed, inputs before or after it, the spec form.

AppTest cannot drive st.file_uploader, so uploads go into the session as the sidebar puts them
(`ui.state.UploadedBlob`); the sidebar keeps what its uploaders did not change.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from foreign_models import write_foreign_models
from streamlit.testing.v1 import AppTest

from tests.conftest import SCREENSHOTS, open_upload_mode, wait_for_app
from ui.state import UploadedBlob

ROOT = Path(__file__).resolve().parent.parent
FORM_SUBMIT = "FormSubmitter:gb_spec_form-Use this spec"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return write_foreign_models(tmp_path_factory.mktemp("foreign_page"))


def _blob(path: Path) -> UploadedBlob:
    data = path.read_bytes()
    return UploadedBlob(path.name, data, hashlib.sha256(data).hexdigest())


def _app(**session) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    for key, value in session.items():
        at.session_state[key] = value
    return at


def _main_text(at: AppTest) -> list[str]:
    """What the main area shows, Markdown escapes removed."""
    return [e.value.replace("\\", "") for kind in ("title", "caption", "markdown", "error", "info")
            for e in at.main.get(kind)]


def test_a_model_and_npy_inputs_without_a_spec_are_explained(foreign):
    at = _app(gb_input_uploads=[_blob(foreign / "img.npy")])  # the inputs first, the model after
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Your model"] and "img.npy" in " ".join(_main_text(at))
    at.session_state["gb_model_upload"] = _blob(foreign / "cnn.ts.pt")
    at.switch_page("pages/views/output.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == ["Output explanations"]
    captions = [c.value for c in at.main.caption]
    assert any("torchscript · image · 2 inputs" in c for c in captions), captions
    assert any(c.startswith("completeness error") for c in captions), captions  # an explanation was drawn
    assert "Spec inferred from the uploaded inputs." in [c.value for c in at.sidebar.caption]
    assert at.sidebar.get("download_button")  # the inferred spec, as JSON for --spec


def test_the_spec_form_starts_from_the_pt2_signature_and_gives_the_json(foreign):
    at = _app(gb_model_upload=_blob(foreign / "txt.pt2"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Your model"]
    assert at.selectbox(key="gb_spec_form_modality").value == "text"
    assert at.text_input(key="gb_spec_form_shape").value == "?"  # the length is dynamic in the signature
    assert any(".pt2 signature" in c.value and "[*, *]" in c.value for c in at.main.caption)

    at.button(key=FORM_SUBMIT).click().run()  # "?" left in: the form says so and nothing loads
    assert not at.exception and [t.value for t in at.title] == ["Your model"]
    assert any("not complete" in e.value for e in at.main.error)

    at.text_input(key="gb_spec_form_shape").input("6")
    at.text_area(key="gb_spec_form_classes").input("negative, positive")
    at.button(key=FORM_SUBMIT).click().run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.session_state["gb_form_spec"].data)
    assert spec["modality"] == "text" and spec["input_shape"] == [6] and spec["dtype"] == "int64"
    assert spec["class_names"] == ["negative", "positive"]
    assert [t.value for t in at.title] != ["Your model"]  # the model loads: the chosen view runs
    assert "Spec from the spec form." in [c.value for c in at.sidebar.caption]
    assert at.sidebar.get("download_button")


def test_a_failed_upload_stays_on_the_upload_with_the_way_forward(foreign):
    at = _app(gb_model_upload=_blob(foreign / "cnn.ts.pt"))
    at.switch_page("pages/views/output.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Your model"]
    shown = " ".join(_main_text(at) + [c.value for c in at.sidebar.caption])
    assert "shapes" not in shown and "safetensors" not in shown  # never the sample in its place
    assert any("cnn.ts.pt does not load" in text for text in _main_text(at))
    assert any("spec" in i.value for i in at.main.info)
    assert at.selectbox(key="gb_spec_form_modality").value == "image"  # guessed from the first Conv2d
    assert at.text_input(key="gb_spec_form_shape").value == "3, ?, ?"


@pytest.mark.browser
def test_inputs_then_a_spec_less_model_through_the_uploaders(app_url, browser_page, foreign):
    """The real widgets: .npy inputs first, then a TorchScript with no spec; the Output page explains it."""
    page = browser_page
    sidebar, uploader = open_upload_mode(page, app_url)
    uploader.filter(has_text="Inputs").locator('input[type="file"]').set_input_files(str(foreign / "img.npy"))
    page.get_by_text("Inputs ready").first.wait_for(timeout=120_000)
    wait_for_app(page)
    uploader.filter(has_text="Checkpoint").locator('input[type="file"]').set_input_files(str(foreign / "cnn.ts.pt"))
    page.get_by_text("completeness error").first.wait_for(timeout=240_000)
    wait_for_app(page)
    main = page.locator('[data-testid="stMain"]')
    assert "torchscript · image · 2 inputs" in main.inner_text()
    assert "Spec inferred from the uploaded inputs" in sidebar.inner_text()
    assert page.locator('[data-testid="stException"]').count() == 0
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "foreign_model_upload.png"), full_page=True)
