"""Shared fixtures: a real Streamlit server and a headless Chromium page.

Browser tests are marked ``browser``. They are skipped when Debian's chromium
is missing, unless ``GLASSBOX_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / ".screenshots"
CHROMIUM = os.environ.get("GLASSBOX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser test (Playwright + Debian chromium)")
    # Every test (and every server a test starts) uses its own empty workspace, never ~/.glassbox.
    os.environ["GLASSBOX_HOME"] = tempfile.mkdtemp(prefix="glassbox-home-")
    os.environ.pop("GLASSBOX_DATABASE_URL", None)


def _require_browser() -> bool:
    return os.environ.get("GLASSBOX_REQUIRE_BROWSER") == "1"


def _browser_available() -> str | None:
    """None if a browser test can run, else why not."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None


def _need_browser() -> None:
    """Skip the test without a browser, or fail it when CI requires one."""
    why = _browser_available()
    if why:
        if _require_browser():
            pytest.fail(f"Browser tests are required (GLASSBOX_REQUIRE_BROWSER=1) but {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free localhost port, once it answers its health check.

    ``env``: variables added to this process's environment (e.g. another ``GLASSBOX_HOME``)."""
    port = _free_port()
    log = open(Path(tempfile.gettempdir()) / f"glassbox-streamlit-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail("streamlit exited before it was healthy")
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy within 90 s")
    return proc, url


def stop_streamlit(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def app_url():
    """A `streamlit run app.py` server on a free localhost port."""
    _need_browser()
    proc, url = start_streamlit()
    yield url
    stop_streamlit(proc)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the whole session (Playwright's sync API allows one driver per thread)."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def _browser(app_url, chromium):
    return chromium


@pytest.fixture
def browser_page(_browser, request):
    """A fresh page (own context) at 1400×1000; a screenshot is saved on teardown."""
    context = _browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    page.set_default_timeout(120_000)
    yield page
    SCREENSHOTS.mkdir(exist_ok=True)
    try:
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    except Exception:
        pass
    context.close()


def wait_for_page_body(page, heading: str, timeout_ms: int = 240_000) -> None:
    """Wait until the page under ``heading`` has drawn more than its heading and stopped running.

    Streamlit shows its 'Running' indicator only after a delay, so on a loaded machine
    `wait_for_app` can return between the heading and the first element under it.
    """
    wait_for_app(page, timeout_ms)
    page.wait_for_function(
        """(heading) => {
            const main = document.querySelector('[data-testid="stMain"]');
            return main && main.innerText.replace(heading, '').trim().length > 0;
        }""",
        arg=heading, timeout=timeout_ms,
    )
    wait_for_app(page, timeout_ms)


def choose_option(page, selectbox, option: str) -> None:
    """Pick ``option`` in a Streamlit selectbox (a rerun that lands while the list is open closes it: retry)."""
    for _ in range(6):
        wait_for_app(page)
        selectbox.get_by_role("button", name="Open").click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError(f"option {option!r} never appeared")


def open_upload_mode(page, app_url: str):
    """The Output page in upload mode, as a new user gets there: the sidebar and its file uploaders."""
    page.goto(app_url + "/output")
    page.get_by_text("Output explanations").first.wait_for(timeout=240_000)
    wait_for_app(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stRadioGroup"]').get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stMain"] h1', has_text="Your model").wait_for(timeout=120_000)
    return sidebar, sidebar.locator('[data-testid="stFileUploader"]')


def wait_for_app(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running' indicator)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        """() => {
            const w = document.querySelector('[data-testid="stStatusWidget"]');
            return !w || !w.innerText.includes('Running');
        }""",
        timeout=timeout_ms,
    )


def in_process(model):
    """A trusted test's copy of ``model`` with its graph loaded in this process (never in the app).

    A user's graph runs in its model process (`explain.loading.model_process`); tests that spy on
    the engine's internals with monkeypatch need the graph here, where the spies are.
    """
    import dataclasses
    import io

    import torch

    from explain.loading.export import load_export_parts

    if model.process is None:
        return model
    data = model.process._data
    if model.format == "torchscript":
        module, program = torch.jit.load(io.BytesIO(data)).eval(), None
    else:
        parts = load_export_parts(data)
        module, program = parts.module, parts.exported_program
    return dataclasses.replace(model, module=module, exported_program=program, process=None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh team workspace in ``tmp_path`` (the app's ``GLASSBOX_HOME``) with the samples registered."""
    from explain.workspace import open_workspace
    from sample_models import sample_registry_files

    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path))
    ws = open_workspace(url=f"sqlite:///{tmp_path}/glassbox.db", home=tmp_path)
    ws.seed(sample_registry_files())
    yield tmp_path, ws
    ws.close()
