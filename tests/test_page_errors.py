"""Every page: a refused input or model is one message (no exception after it), and user text shows literally."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import SCREENSHOTS, wait_for_app
from ui.state import UploadedBlob
from ui.text import escape_markdown

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ["overview", "output", "structure", "training"]
NAME = "**bold** _x_ __import__"  # Markdown would show "bold x import" in bold and italics


def _blob(name: str, data: bytes) -> UploadedBlob:
    return UploadedBlob(name, data, hashlib.sha256(data).hexdigest())


def test_escape_markdown_leaves_every_character_literal():
    assert escape_markdown(NAME) == r"\*\*bold\*\* \_x\_ \_\_import\_\_"
    assert escape_markdown(":red[x] $a$ <b> [l](u) `c` ~s~ #1.") == (
        r"\:red\[x\] \$a\$ \<b\> \[l\]\(u\) \`c\` \~s\~ \#1\.")
    assert escape_markdown("    two\nlines") == "two lines"  # one line, never a code block
    assert escape_markdown("é · 3") == "é · 3"


@pytest.mark.parametrize("view", VIEWS)
def test_a_refused_input_is_one_message_on_every_page(view):
    """The Output page used to follow the message with NameError: name 'chosen' is not defined."""
    at = AppTest.from_file(str(ROOT / "pages" / "views" / f"{view}.py"), default_timeout=300)
    at.session_state["gb_input_uploads"] = [_blob(f"{NAME}.npy", b"not an array")]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert escape_markdown(f"{NAME}.npy") in errors[0]  # rendered literally: **bold** _x_ __import__.npy


def test_a_refused_model_upload_is_named_literally_in_the_sidebar():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_model_upload"] = _blob(f"{NAME}.pt", b"garbage, not a model")
    at.session_state["gb_source"] = "upload"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and escape_markdown(f"{NAME}.pt") in errors[0], errors
    assert [t.value for t in at.title] == ["Your model"]  # the page stays on the upload, never the sample
    assert any(escape_markdown(f"{NAME}.pt") in e.value for e in at.main.error)


def test_an_uploaded_model_and_class_name_are_literal_in_the_model_card_and_the_page():
    data = (ROOT / "sample_models" / "cancer" / "model.safetensors").read_bytes()
    spec = json.dumps({"modality": "tabular", "input_shape": [30], "class_names": [NAME, NAME + " 2"], "name": NAME})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_model_upload"] = _blob(f"{NAME}.safetensors", data)
    at.session_state["gb_spec_upload"] = _blob("spec.json", spec.encode())
    at.session_state["gb_source"] = "upload"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [e.value for kind in ("markdown", "caption", "error", "warning", "info") for e in at.get(kind)]
    assert any(escape_markdown(NAME) in text for text in shown), shown  # the model card, the predicted class
    assert not [text for text in shown if NAME in text], shown  # never as Markdown


@pytest.mark.browser
def test_markdown_in_file_and_column_names_shows_literally(app_url, browser_page):
    page = browser_page
    page.goto(app_url + "/training")
    page.get_by_text("Attribution drift").first.wait_for(timeout=240_000)
    wait_for_app(page)
    page.get_by_text("Your training logs and checkpoints").click()
    rows = "".join(f"{e},{1 / (e + 1):.4f},{0.5 + 0.01 * min(e, 25):.4f}\n" for e in range(40))
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Training logs")
    uploader.locator('input[type="file"]').set_input_files([
        {"name": f"{NAME}.csv", "mimeType": "text/csv", "buffer": (f"epoch,loss,val_acc {NAME}\n" + rows).encode()},
        {"name": f"{NAME}.jsonl", "mimeType": "application/json", "buffer": b'{"loss": 1.0}\n{"loss": oops}\n'},
    ])
    page.get_by_text(f"{NAME}.jsonl: line 2 is not valid JSON").first.wait_for(timeout=120_000)
    page.get_by_text(f"Best validation val_acc {NAME}").first.wait_for(timeout=120_000)  # a finding quotes the column
    wait_for_app(page)
    main = page.locator('[data-testid="stMain"]')
    assert NAME in main.inner_text()
    assert main.locator("strong", has_text="bold").count() == 0 and main.locator("em", has_text="x").count() == 0

    page.locator('[data-testid="stSidebar"] [data-testid="stRadioGroup"]').get_by_text("Upload", exact=True).click()
    sidebar = page.locator('[data-testid="stSidebar"]')
    model_uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(has_text="Checkpoint")
    model_uploader.locator('input[type="file"]').set_input_files(
        [{"name": f"{NAME}.pt", "mimeType": "application/octet-stream", "buffer": b"garbage, not a model"}])
    sidebar.get_by_text(f"{NAME}.pt").first.wait_for(timeout=120_000)
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "literal_user_text.png"), full_page=True)
