"""A hostile graph uploaded through the page fails in its model process, never in the server.

One Streamlit server (started with a small ``GLASSBOX_MODEL_CALL_TIMEOUT_S``) and
one browser with two contexts at once. Context A uploads a crafted TorchScript
(its spec embedded as ``glassbox_spec.json``) that is quiet on vetting's random
inputs but, on the loader's forward check on zeros, either allocates 800 GB or
spins forever. Both run only in A's model process (`explain.loading.model_process`):
A gets one line in the page, while context B on the same server explains the
bundled sample, and A then picks the sample again and gets a working page.
"""
from __future__ import annotations

import time

import pytest
from torch import nn

from tests.conftest import _need_browser, start_streamlit, stop_streamlit, wait_for_app
from tests.crafted_models import TABULAR, ZeroBomb, ZeroSpin, scripted

CALL_TIMEOUT_S = 5  # the model process's per-request limit in this module's server
SPEC = TABULAR
DEAD_SERVER = ("Connection error", "Is Streamlit still running?")
MEMORY_REFUSAL = "needs more memory than allowed on an input of shape [1, 4]"
TIMEOUT_REFUSAL = f"did not finish running the model within {CALL_TIMEOUT_S} s"
WORKING = "completeness error"  # the Output page's caption under an explained input


def _script_with_spec(module: nn.Module) -> bytes:
    return scripted(module, SPEC)


@pytest.fixture(scope="module")
def server():
    """This module's own Streamlit server, its model calls stopped after CALL_TIMEOUT_S."""
    _need_browser()
    proc, url = start_streamlit(env={"GLASSBOX_MODEL_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S)})
    yield proc, url
    stop_streamlit(proc)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    files = {"bomb": folder / "zero_bomb.pt", "spin": folder / "zero_spin.pt"}
    files["bomb"].write_bytes(_script_with_spec(ZeroBomb()))
    files["spin"].write_bytes(_script_with_spec(ZeroSpin()))
    return files


@pytest.fixture(scope="module")
def contexts(server, chromium):
    """Two browser contexts on the same server at once: A (the uploader) and B (a visitor)."""
    made = [chromium.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    pages = []
    for context in made:
        page = context.new_page()
        page.set_default_timeout(120_000)
        pages.append(page)
    yield pages
    for context in made:
        context.close()


def _text(page) -> str:
    try:
        return page.locator("body").inner_text(timeout=5_000)
    except Exception as exc:  # the page itself is gone
        return f"<no page text: {exc}>"


def _assert_healthy(page, who: str) -> None:
    body = _text(page)
    dead = [line for line in DEAD_SERVER if line in body]
    assert not dead, f"context {who} lost the server ({dead}); page text:\n{body[:3000]}"
    assert page.locator('[data-testid="stException"]').count() == 0, f"context {who} shows an exception:\n{body[:3000]}"
    assert "Traceback" not in body, f"context {who} shows a traceback:\n{body[:3000]}"


def _wait_for(*targets: tuple, timeout_s: float = 90) -> list[float]:
    """Wait until every ``(page, text, who)`` has its text on its page, polling them together.

    Returns the seconds after which each text appeared; fails at once when a page lost the
    server, else on timeout, with the page's own text either way."""
    start = time.monotonic()
    seen: list[float | None] = [None] * len(targets)
    while None in seen:
        for i, (page, text, who) in enumerate(targets):
            if seen[i] is not None:
                continue
            if page.get_by_text(text).count():
                seen[i] = time.monotonic() - start
                continue
            body = _text(page)
            if any(line in body for line in DEAD_SERVER):
                pytest.fail(f"context {who} lost the server while waiting for {text!r}; page text:\n{body[:3000]}")
            if time.monotonic() - start > timeout_s:
                pytest.fail(f"context {who}: {text!r} not on the page within {timeout_s:.0f} s; "
                            f"page text:\n{body[:3000]}")
        if None in seen:
            targets[0][0].wait_for_timeout(250)
    return seen


def _wait_for_text(page, text: str, who: str, timeout_s: float = 90) -> float:
    return _wait_for((page, text, who), timeout_s=timeout_s)[0]


def _sidebar_radio(page, label: str) -> None:
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stRadioGroup"]').get_by_text(label, exact=True).click()


def _open_upload(page, url: str) -> None:
    """The Output page switched to upload mode (without waiting for the sample's explanation)."""
    if not page.url.startswith(url):  # a fresh context; else the radio is already there
        page.goto(url + "/output")
        _wait_for_text(page, "Output explanations", "A", timeout_s=120)
    _sidebar_radio(page, "Upload")
    page.locator('[data-testid="stMain"] h1', has_text="Your model").wait_for(timeout=60_000)
    wait_for_app(page)


def _upload(page, path) -> None:
    page.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').first.locator(
        'input[type="file"]').set_input_files(str(path))


def _assert_one_line_refusal(page, name: str, reason: str) -> None:
    """The main area says '<file> does not load: <reason>' in one error line, nothing more."""
    _wait_for_text(page, f"{name} does not load", "A", timeout_s=60)  # the main area follows the sidebar
    alert = page.locator('[data-testid="stMain"] [data-testid="stAlert"]', has_text=f"{name} does not load")
    assert alert.count() == 1, _text(page)[:3000]
    message = alert.locator('[data-testid="stMarkdownContainer"]').first.inner_text().strip()
    assert message.startswith(f"{name} does not load: ") and reason in message, message
    assert "\n" not in message, message
    _assert_healthy(page, "A")


@pytest.mark.browser
def test_a_memory_bomb_on_the_loader_check_fails_one_upload_while_another_context_explains(server, crafted, contexts):
    proc, url = server
    a, b = contexts
    _open_upload(a, url)
    _upload(a, crafted["bomb"])  # vetting passes on random inputs; the check on zeros asks for 800 GB
    b.goto(url + "/output")  # B comes in while A's model process is loading and bombing
    refused, explained = _wait_for((a, MEMORY_REFUSAL, "A"), (b, WORKING, "B"), timeout_s=120)
    print(f"\nafter A's upload: A refused the memory bomb in {refused:.1f} s, B explained the sample in "
          f"{explained:.1f} s")
    wait_for_app(a)
    _assert_one_line_refusal(a, crafted["bomb"].name, MEMORY_REFUSAL)
    assert a.get_by_text("The page stays on your upload until it loads.").count() >= 1
    a.screenshot(path="/tmp/bomb_A.png", full_page=True)

    b.locator('[data-testid="stMain"] .js-plotly-plot').first.wait_for(timeout=60_000)
    wait_for_app(b)
    _assert_healthy(b, "B")
    b.screenshot(path="/tmp/bomb_B.png", full_page=True)

    _sidebar_radio(a, "Sample model")  # A leaves the bomb for the bundled sample: a working page again
    _wait_for_text(a, WORKING, "A", timeout_s=120)
    a.locator('[data-testid="stMain"] .js-plotly-plot').nth(1).wait_for(timeout=60_000)  # drawn lazily
    wait_for_app(a)
    _assert_healthy(a, "A")
    assert a.get_by_text(MEMORY_REFUSAL).count() == 0
    a.screenshot(path="/tmp/bomb_A_sample.png", full_page=True)
    assert proc.poll() is None


@pytest.mark.browser
def test_a_spin_on_the_loader_check_is_stopped_after_the_call_timeout_while_another_context_works(
        server, crafted, contexts):
    proc, url = server
    a, b = contexts
    _open_upload(a, url)
    _upload(a, crafted["spin"])  # the check on zeros never returns: stopped after CALL_TIMEOUT_S
    b.goto(url + "/output")  # B reopens its page (a new session) while A's model process spins
    stopped, explained = _wait_for((a, TIMEOUT_REFUSAL, "A"), (b, WORKING, "B"), timeout_s=120)
    print(f"\nafter A's upload: A's spin stopped in {stopped:.1f} s, B explained the sample in {explained:.1f} s")
    wait_for_app(a)
    _assert_one_line_refusal(a, crafted["spin"].name, TIMEOUT_REFUSAL)
    a.screenshot(path="/tmp/spin_A.png", full_page=True)
    b.locator('[data-testid="stMain"] .js-plotly-plot').first.wait_for(timeout=60_000)
    wait_for_app(b)
    _assert_healthy(b, "B")
    b.screenshot(path="/tmp/spin_B.png", full_page=True)
    assert proc.poll() is None
