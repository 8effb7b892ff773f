"""Bombs uploaded through the page: refused with a message, the app keeps serving,
and the server process stays small.

A TorchScript memory bomb (20 GB at batch 2) and a time bomb (an endless loop
at batch 2), both quiet at batch 1, are uploaded in one browser context while
a second context keeps using the app. The server runs with small sandbox
limits so the refusals come in seconds.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from tests.conftest import _need_browser, start_streamlit, stop_streamlit, wait_for_app
from tests.test_sandbox import SMALL_LIMITS, MemoryBomb, TimeBomb, bomb_bytes

GIB = 1 << 30


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


@pytest.fixture(scope="module")
def small_limit_server():
    """A Streamlit server of its own, started with small sandbox limits."""
    _need_browser()
    saved = {k: os.environ.get(k) for k in SMALL_LIMITS}
    os.environ.update(SMALL_LIMITS)
    try:
        proc, url = start_streamlit()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield proc, url
    stop_streamlit(proc)


@pytest.mark.browser
def test_uploaded_bombs_are_refused_while_another_session_keeps_working(small_limit_server, chromium, tmp_path):
    proc, url = small_limit_server
    files = {}
    for name, bomb in (("membomb.pt", MemoryBomb), ("timebomb.pt", TimeBomb)):
        files[name] = tmp_path / name
        files[name].write_bytes(bomb_bytes(bomb()))
    peak = {"rss": 0}
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            try:
                peak["rss"] = max(peak["rss"], _status_kib(proc.pid, "VmRSS") * 1024)
            except (OSError, StopIteration):
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    attacker = chromium.new_context(viewport={"width": 1400, "height": 1000})
    visitor = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = attacker.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        wait_for_app(page)
        page.get_by_text("Upload", exact=True).click()
        uploader = page.locator('[data-testid="stFileUploader"]').first.locator('input[type="file"]')

        uploader.set_input_files(str(files["membomb.pt"]))
        page.get_by_text("more memory than the loader allows at a batch of 2").first.wait_for()
        wait_for_app(page)
        assert page.locator('[data-testid="stException"]').count() == 0

        uploader.set_input_files(str(files["timebomb.pt"]))  # the loop runs while the visitor comes in
        other = visitor.new_page()
        other.set_default_timeout(120_000)
        other.goto(url)
        wait_for_app(other)
        other.get_by_text("Overview").first.wait_for()
        assert other.locator('[data-testid="stException"]').count() == 0

        page.get_by_text("did not finish within 4 s at a batch of 2").first.wait_for()
        wait_for_app(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_text("The page stays on your upload until it loads.").count() >= 1
    finally:
        stop.set()
        sampler.join(2)
        attacker.close()
        visitor.close()
    hwm = _status_kib(proc.pid, "VmHWM") * 1024
    print(f"\nserver peak RSS: sampled {peak['rss'] / GIB:.2f} GiB, VmHWM {hwm / GIB:.2f} GiB")
    assert proc.poll() is None
    assert hwm < 3 * GIB and peak["rss"] < 3 * GIB
