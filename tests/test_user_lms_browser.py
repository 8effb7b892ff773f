"""A new user's own causal LMs on the Generate page in a real browser (issue 22), two families as their users
hand them over (`causal_families`): a Qwen2 folder zipped (sharded safetensors, a ChatML template, tied head),
explained as a chat; a Gemma 2 zip (a folder holding a weights-only pytorch_model.bin, soft-capping) explained
by DeepLIFT. While each run lasts, the settings are drawn once (no greyed second Top-p / Seed row)."""
from __future__ import annotations

import time
import zipfile

import pytest
from causal_families import write_family

from tests.conftest import SCREENSHOTS, choose_option, open_upload_mode, wait_for_app, wait_for_page_body

pytestmark = pytest.mark.browser
PROMPT = "the cat sat on"
NEW = 3


#: Counts the main area's labels reading ``label`` at every change of the page, keeping the most: a stale element
#: the browser keeps for a moment (greyed while the run lasts) is caught however short the moment (sampling was not).
WATCH = """(label) => {
    const count = () => [...document.querySelectorAll('[data-testid="stMain"] label')]
        .filter(l => l.innerText.trim() === label).length;
    window.__gbMost = count();
    new MutationObserver(() => { window.__gbMost = Math.max(window.__gbMost, count()); })
        .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def _watch(page, label: str = "Top-p") -> None:
    page.evaluate(WATCH, label)


def _most_seen(page, at_least: float = 4.0) -> int:
    """The most labels the watch saw, once ``at_least`` seconds passed and the page's run ended."""
    time.sleep(at_least)  # Streamlit shows 'Running' only after a delay
    wait_for_app(page, 240_000)
    return int(page.evaluate("() => window.__gbMost"))


def _no_exception(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()[:800]


def _upload_and_open_generate(page, app_url, archive):
    sidebar, uploader = open_upload_mode(page, app_url)
    uploader.filter(has_text="Checkpoint").locator('input[type="file"]').set_input_files(str(archive))
    sidebar.get_by_text(archive.name).first.wait_for(timeout=240_000)
    wait_for_app(page, 240_000)
    sidebar.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Generate", exact=True).click()
    page.locator('[data-testid="stMain"] h1', has_text="Generate").wait_for(timeout=240_000)
    wait_for_page_body(page, "Generate")
    _no_exception(page)
    return page.locator('[data-testid="stMain"]')


def _generate(page, main, expected_prompt_tokens: int) -> str:
    _watch(page)
    main.get_by_role("button", name="Generate and explain").click()
    assert _most_seen(page) == 1  # drawn once while the run lasts
    main.get_by_text("Generated text").wait_for(timeout=240_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    _no_exception(page)
    text = main.inner_text()
    assert f"Greedy continuation: {NEW} tokens after a prompt of {expected_prompt_tokens}" in text, text[:3000]
    return text


def test_a_users_qwen2_zip_explained_as_a_chat(app_url, browser_page, tmp_path):
    from explain.generation.chat import render_chat
    from explain.generation.prompts import encode_texts
    from explain.loading.loader import load_model

    page = browser_page
    folder = write_family(tmp_path, "qwen2")
    archive = tmp_path / "my-qwen2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"my-qwen2/{path.name}")
    model = load_model(archive)
    chat = render_chat(model, [[{"role": "user", "content": PROMPT}]])
    length = len(encode_texts(chat, model.spec, special_tokens=False)[0])
    main = _upload_and_open_generate(page, app_url, archive)
    main.get_by_label("Prompt", exact=True).fill(PROMPT)
    main.get_by_role("spinbutton", name="Max new tokens").fill(str(NEW))
    main.get_by_role("spinbutton", name="Max new tokens").press("Enter")
    wait_for_app(page, 240_000)
    _watch(page)
    main.get_by_text("Chat: the prompt is the user's last message").first.click()
    assert _most_seen(page) == 1  # ticking Chat: no greyed second Top-p / Seed row (the page before c4c3629: 2)
    main.get_by_role("spinbutton", name="Earlier turns").wait_for(timeout=120_000)
    text = _generate(page, main, length)
    assert "Completeness error per token" in text and "Logit lens" in text, text[:3000]
    page.screenshot(path=str(SCREENSHOTS / "generate_user_qwen2_chat.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_user_qwen2_chat_matrix.png"))


def test_a_users_gemma2_zip_explained_by_deeplift(app_url, browser_page, tmp_path):
    from explain.generation.prompts import encode_texts
    from explain.loading.loader import load_model

    page = browser_page
    archive = write_family(tmp_path, "gemma2")  # gemma2.zip: gemma2/pytorch_model.bin, config.json, tokenizer.json
    length = len(encode_texts([PROMPT], load_model(archive).spec)[0])
    main = _upload_and_open_generate(page, app_url, archive)
    main.get_by_label("Prompt", exact=True).fill(PROMPT)
    main.get_by_role("spinbutton", name="Max new tokens").fill(str(NEW))
    main.get_by_role("spinbutton", name="Max new tokens").press("Enter")
    choose_option(page, main.locator('[data-testid="stSelectbox"]').filter(has_text="Method"), "deeplift")
    wait_for_app(page, 240_000)
    text = _generate(page, main, length)
    assert "deeplift" in text and "Completeness error per token" in text, text[:3000]
    page.screenshot(path=str(SCREENSHOTS / "generate_user_gemma2_deeplift.png"), full_page=True)
    main.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "generate_user_gemma2_deeplift_matrix.png"))
