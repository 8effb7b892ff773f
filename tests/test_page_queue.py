"""The Queue page: every session's jobs with who / what / how far, Cancel, and queueing the sidebar
model's explanation as a job (AppTest; the queue itself is tested in tests/test_jobs.py)."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.workspace import Actor, open_workspace
from sample_models import sample_registry_files

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "queue.py")
OP = Actor("cli:tester", operator=True)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """This test's own workspace, with no worker: jobs stay where the test puts them."""
    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GLASSBOX_EXTERNAL_WORKER", "1")
    workspace = open_workspace(home=tmp_path / "home")
    workspace.seed(sample_registry_files())
    yield workspace
    workspace.close()


def _page(sample: str = "cancer") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    return at


def test_queue_lists_every_sessions_jobs_and_cancels_one(ws):
    first = ws.jobs.submit(Actor.local(), "explain", {}, title="saliency on 3 inputs of cancer@v1")
    ws.jobs.submit(Actor.local(), "explain", {}, title="occlusion on 2 inputs of shapes@v1", priority="interactive")
    claimed = ws.jobs.claim("w1")  # the interactive one runs
    ws.jobs.heartbeat(claimed.id, "w1", progress=0.4)
    at = _page().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table[["who", "what", "status", "progress"]].values.tolist() == [
        ["local", "occlusion on 2 inputs of shapes@v1", "running", 40],
        ["local", "saliency on 3 inputs of cancer@v1", "queued", 0]]
    at.button(key=f"gb_job_cancel_{first.id}").click().run()
    assert not at.exception, at.exception
    assert ws.jobs.get(OP, first.id).status == "cancelled"
    assert at.dataframe[0].value.set_index("job").loc[first.id, "status"] == "cancelled"


def test_queue_an_explanation_of_the_sidebar_model(ws):
    at = _page().run()
    assert not at.exception, at.exception
    assert any("queue is empty" in i.value for i in at.info)
    at.selectbox(key="gb_job_method").set_value("saliency")
    at.number_input(key="gb_job_rows").set_value(3)
    at.button(key="gb_job_submit").click().run()
    assert not at.exception, at.exception
    (job,) = ws.jobs.list(OP)
    assert (job.owner, job.kind, job.status, job.priority) == ("local", "explain", "queued", "interactive")
    assert job.params["method"] == "saliency" and job.params["model"] == "cancer"
    assert ws.jobs.inputs(job)["inputs"].shape == (3, 30)
    assert job.title in at.dataframe[0].value["what"].tolist()


def _output_page(sample: str = "cancer") -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "views" / "output.py"), default_timeout=180)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    return at


def _in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_output_page_explains_through_the_queue_and_shows_the_saved_run(ws):
    """The page's one path: a job in the queue, run by a worker (here an 'external' one in a
    thread), its result a saved run the page draws and links to."""
    from explain.service.worker import Worker
    from explain.workspace.records import output_attributions

    worker = Worker(ws, name="external-1", poll_s=0.05)
    thread = _in_thread(worker.run_forever)
    try:
        at = _output_page().run()
        at.multiselect(key="gb_methods").set_value(["integrated_gradients", "saliency"]).run()
    finally:
        worker.stop.set()
        thread.join(10)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    jobs = ws.jobs.list(OP)
    last = jobs[0]  # newest first: the two-method request
    assert (last.status, last.worker, last.priority, last.params["method"]) == (
        "done", "external-1", "interactive", "integrated_gradients,saliency")
    assert any(f"?run={last.run}" in c.value for c in at.code)
    run = ws.runs.open(OP, last.run)
    attrs = output_attributions(run)
    assert [a.method for a in attrs] == ["integrated_gradients", "saliency"]
    assert run.inputs["inputs"].shape == (len(run.inputs["rows"]), 30)  # tabular: the whole batch
    captions = " ".join(c.value for c in at.caption)
    shown = float(re.findall(r"completeness error ([0-9.e+-]+)", captions)[0])
    assert shown == pytest.approx(float(attrs[0].completeness_error[run.info.summary["shown"][0]]), rel=0.02, abs=1e-4)
    again = len(ws.jobs.list(OP))
    at.run()  # a rerun with the same request follows the same job: nothing is queued twice
    assert len(ws.jobs.list(OP)) == again


def test_output_page_shows_a_cancelled_job_and_explains_again_on_request(ws):
    from explain.service.worker import Worker

    def cancel_first_queued():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            queued = [j for j in ws.jobs.list(OP) if j.status == "queued"]
            if queued:
                ws.jobs.cancel(Actor.local(), queued[0].id)  # e.g. from the Queue page of another session
                return
            time.sleep(0.05)

    canceller = _in_thread(cancel_first_queued)
    at = _output_page().run()
    canceller.join(10)
    assert not at.exception, at.exception
    assert any("cancelled" in i.value for i in at.info)
    assert ws.jobs.list(OP)[0].status == "cancelled"
    worker = Worker(ws, name="external-2", poll_s=0.05)
    thread = _in_thread(worker.run_forever)
    try:
        [b for b in at.button if b.label == "Explain"][0].click().run()
    finally:
        worker.stop.set()
        thread.join(10)
    assert not at.exception, at.exception
    assert [j.status for j in ws.jobs.list(OP)][:2] == ["done", "cancelled"]
    assert any("?run=" in c.value for c in at.code)


def test_a_viewer_is_told_explaining_needs_an_editor_and_nothing_is_queued(ws):
    ws.users.add(OP, "ada", "admin", "admin-pass-1")
    ws.users.add(Actor("ada"), "vic", "viewer", "viewer-pass-1")
    at = _output_page()
    at.session_state["authentication_status"] = True
    at.session_state["username"] = "vic"
    at.run()
    assert not at.exception, at.exception
    assert any("editor role" in i.value for i in at.info)
    assert ws.jobs.list(OP) == []


@pytest.mark.browser
def test_eight_browser_sessions_queue_at_once_and_every_job_is_run_once(chromium, tmp_path):
    from tests.conftest import start_streamlit, stop_streamlit, wait_for_app

    home = tmp_path / "home"
    proc, url = start_streamlit({"GLASSBOX_HOME": str(home), "GLASSBOX_EXTERNAL_WORKER": "0"})
    contexts = [chromium.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(8)]
    try:
        pages = [c.new_page() for c in contexts]
        for page in pages:
            page.goto(f"{url}/queue", wait_until="commit")
        for page in pages:
            page.locator('[data-testid="stMain"] h1', has_text="Job queue").first.wait_for(timeout=300_000)
            wait_for_app(page, timeout_ms=300_000)
            page.get_by_text("Queue an explanation of the sidebar's model").click()
            page.get_by_role("button", name="Queue", exact=True).wait_for(timeout=120_000)
        for page in pages:  # all eight clicks before any answer is awaited
            page.get_by_role("button", name="Queue", exact=True).click()
        for page in pages:
            page.get_by_text("Queued job").first.wait_for(timeout=300_000)
            assert page.locator('[data-testid="stException"]').count() == 0
        ws = open_workspace(f"sqlite:///{home / 'glassbox.db'}", home=home)
        deadline = time.monotonic() + 600
        while any(j.status in ("queued", "running") for j in ws.jobs.list(OP)):
            assert time.monotonic() < deadline, [j.status for j in ws.jobs.list(OP)]
            time.sleep(0.5)
        jobs = ws.jobs.list(OP)
        assert len(jobs) == 8 and {j.status for j in jobs} == {"done"} and {j.attempts for j in jobs} == {1}
        assert sorted(r.id for r in ws.runs.list(OP)) == sorted(j.run for j in jobs)
        ws.close()
    finally:
        for context in contexts:
            context.close()
        stop_streamlit(proc)


def test_an_explain_job_measures_its_metrics_as_the_library_does_and_the_run_keeps_them(ws):
    """The Quality tab's metrics are measured in the Output page's job: the saved run holds them,
    equal to `evaluate_quality` on the saved maps, and a metric that needs masks is refused without."""
    from explain.errors import UsageError
    from explain.output.metrics.quality import evaluate_quality
    from explain.service.client import finished_run, run_here
    from explain.service.runners import explain_methods_job
    from explain.workspace.records import output_attributions, output_quality
    from sample_models import load_sample, sample_inputs

    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:6]
    metrics = [("deletion", {"steps": 8}), ("sparseness", {})]
    params, arrays, title = explain_methods_job(model, "cancer", 1, x, [("saliency", {})], None, metrics=metrics)
    job = ws.jobs.submit(Actor.local(), "explain", params, title=title, inputs=arrays)
    run = finished_run(ws, Actor.local(), run_here(ws, job.id))
    saved, attrs = output_quality(run), output_attributions(run)
    expected = evaluate_quality(model, attrs, ["deletion", "sparseness"], params={"deletion": {"steps": 8}})
    for metric in ("deletion", "sparseness"):
        got, want = saved["saliency"][metric], expected["saliency"][metric]
        np.testing.assert_allclose(got.per_input, want.per_input, rtol=1e-6)
        assert got.higher_is_better == want.higher_is_better and got.params == want.params
    np.testing.assert_allclose(saved["saliency"]["deletion"].curve, expected["saliency"]["deletion"].curve, rtol=1e-6)
    with pytest.raises(UsageError, match="needs ground-truth masks"):
        explain_methods_job(load_sample("shapes"), "shapes", 1, sample_inputs("shapes")["inputs"][:2],
                            [("saliency", {})], None, metrics=[("pointing_game", {})])

    opened = AppTest.from_file(str(ROOT / "pages" / "views" / "runs.py"), default_timeout=180)
    opened.query_params["run"] = run.info.id
    opened.run()
    assert not opened.exception, opened.exception
    table = opened.dataframe[0].value.set_index("metric")  # the saved run shows its quality, not recomputed
    from explain.output.metrics import get_metric
    assert table.loc[get_metric("sparseness").title, "mean"] == pytest.approx(saved["saliency"]["sparseness"].mean)
    assert table.loc[get_metric("deletion").title, "method"] == "saliency"


def test_a_failed_job_shows_its_reason_and_try_again_queues_it_anew(ws, monkeypatch):
    from explain.service import runners
    from explain.service.worker import Worker

    real = runners.RUNNERS["explain"]

    def broken(ctx):
        raise RuntimeError("the GPU fell over")

    monkeypatch.setitem(runners.RUNNERS, "explain", broken)
    worker = Worker(ws, name="external-3", poll_s=0.05)
    thread = _in_thread(worker.run_forever)
    try:
        at = _output_page().run()
        assert not at.exception, at.exception
        assert any("the GPU fell over" in e.value for e in at.error)  # one line, no traceback
        monkeypatch.setitem(runners.RUNNERS, "explain", real)
        at.button(key="gb_output_retry").click().run()
    finally:
        worker.stop.set()
        thread.join(10)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [j.status for j in ws.jobs.list(OP)][:2] == ["done", "failed"]
    assert any("?run=" in c.value for c in at.code)
