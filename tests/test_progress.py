"""Progress and cancel have one home (`explain.progress`): one type, one cancel (the callback raises)."""
import inspect
import re
from pathlib import Path

import pytest

import explain.errors
from explain.dataset.run import explain_dataset
from explain.progress import Cancelled, report_progress

ROOT = Path(__file__).resolve().parents[1]


def test_progress_fn_is_defined_once_and_cancelled_is_the_error_class():
    definitions = [p.relative_to(ROOT).as_posix() for p in (ROOT / "explain").rglob("*.py")
                   if re.search(r"^\w*ProgressFn = ", p.read_text(), re.M)]
    assert definitions == ["explain/progress.py"]
    assert Cancelled is explain.errors.Cancelled


def test_nothing_polls_a_cancel_flag():
    assert "cancelled" not in inspect.signature(explain_dataset).parameters
    sources = "".join(p.read_text() for p in (ROOT / "explain").rglob("*.py"))
    assert "CancelledFn" not in sources


def test_report_progress_calls_the_callback_and_lets_its_cancel_through():
    seen = []
    report_progress(None, 1, 2)  # no callback: nothing happens
    report_progress(lambda d, t: seen.append((d, t)), 1, 2)
    assert seen == [(1, 2)]

    def stop(d, t):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        report_progress(stop, 1, 2)



# -- a job's progress and cancel, seen from another connection (SQLite and PostgreSQL) -------------
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import explain.dataset.run as dataset_run  # noqa: E402
from explain.dataset.job import dataset_job  # noqa: E402
from explain.dataset.reading import Dataset  # noqa: E402
from explain.output.cache import ATTRIBUTION_CACHE  # noqa: E402
from explain.output.engine import Engine  # noqa: E402
from explain.service.runners import RUNNERS, explain_job  # noqa: E402
from explain.service.worker import Worker  # noqa: E402
from explain.workspace import Actor, open_workspace  # noqa: E402
from sample_models import load_sample, sample_inputs, sample_registry_files  # noqa: E402

pytest_plugins = ["tests.workspace_db"]
OP, ALICE = Actor("cli:tester", operator=True), Actor("alice")


@pytest.fixture
def team(workspace):
    workspace.seed(sample_registry_files())
    workspace.users.add(OP, "alice", "admin")
    other = open_workspace(workspace.url, home=workspace.home)  # another session's own connection
    yield workspace, other
    other.close()


@pytest.fixture(scope="module")
def rows64():
    x = sample_inputs("cancer")["inputs"]  # [32, 30]
    return load_sample("cancer"), np.concatenate([x, 0.5 * x + 0.1]).astype(np.float32)  # [64, 30]


def _submit(ws, kind: str, model, x, **params):
    if kind == "dataset":
        data = Dataset("rows", model.spec, [f"r{i}" for i in range(len(x))], None, lambda a, b: x[a:b])
        job_params, arrays, title = dataset_job(model, "cancer", 1, data, "integrated_gradients", params, None,
                                                shard_rows=16)
    else:
        job_params, arrays, title = explain_job(model, "cancer", 1, x, {"method": "integrated_gradients", **params})
    return ws.jobs.submit(ALICE, kind, job_params, title=title, inputs=arrays, priority="batch")


def _wrap_progress(monkeypatch, kind: str, hook):
    """Run ``hook(done, total, forward)`` for every progress report of ``kind`` jobs."""
    real = RUNNERS[kind]

    def run(ctx):
        forward = ctx.progress
        ctx.progress = lambda done, total: hook(done, total, forward)
        return real(ctx)

    monkeypatch.setitem(RUNNERS, kind, run)


def _eventually(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["explain", "dataset"])
def test_a_64_row_job_shows_its_progress_to_another_session_before_it_ends(team, rows64, kind, monkeypatch):
    ws, other = team
    model, x = rows64
    monkeypatch.setenv("GLASSBOX_JOB_HEARTBEAT_S", "0.1")
    midway, release = threading.Event(), threading.Event()
    ATTRIBUTION_CACHE.clear()  # the other backend's run of the same request would answer at once

    def hold(done, total, forward):  # the job stops after its first chunk until the test has looked
        forward(done, total)
        if 0 < done < total and not midway.is_set():
            midway.set()
            assert release.wait(120)

    _wrap_progress(monkeypatch, kind, hold)
    job = _submit(ws, kind, model, x, steps=32)
    worker = threading.Thread(target=Worker(ws, name="w").run_once)
    worker.start()
    try:
        assert midway.wait(120)
        _eventually(lambda: other.jobs.get(OP, job.id).progress > 0, "no progress reached the row mid-job")
        seen = other.jobs.get(OP, job.id)
        assert seen.status == "running" and 0 < seen.progress < 1
    finally:
        release.set()
        worker.join(120)
    assert other.jobs.get(OP, job.id).status == "done"


def test_cancel_between_two_chunks_runs_no_further_chunk(team, rows64, monkeypatch):
    ws, other = team
    model, x = rows64
    chunks = []
    real_chunk = Engine._grad_chunk
    monkeypatch.setattr(Engine, "_grad_chunk", lambda self, *a, **k: chunks.append(1) or real_chunk(self, *a, **k))
    at_cancel = []
    ATTRIBUTION_CACHE.clear()

    def cancel_after_first(done, total, forward):
        if 0 < done < total and not at_cancel:
            at_cancel.append(len(chunks))
            ws.jobs.cancel(ALICE, job.id)  # the Cancel button of a page of this server
        forward(done, total)

    _wrap_progress(monkeypatch, "explain", cancel_after_first)
    job = _submit(ws, "explain", model, x, steps=8, batch_size=128, tolerance=0.0)  # 512 points: 4 chunks
    Worker(ws, name="w").run_once()
    assert other.jobs.get(OP, job.id).status == "cancelled"
    assert at_cancel == [1] and len(chunks) == 1  # the chunk that reported, then nothing


def test_cancel_from_another_process_between_two_shards_runs_no_further_shard(team, rows64, monkeypatch):
    ws, other = team
    model, x = rows64
    shards = []
    real_shard = dataset_run.explain_shard
    monkeypatch.setattr(dataset_run, "explain_shard", lambda *a, **k: shards.append(1) or real_shard(*a, **k))

    def cancel_after_first(done, total, forward):
        if done == 1 and len(shards) == 1:
            other.jobs.cancel(ALICE, job.id)  # another server's session: only the row says so
        forward(done, total)

    _wrap_progress(monkeypatch, "dataset", cancel_after_first)
    job = _submit(ws, "dataset", model, x, steps=8)  # 4 shards of 16 rows
    Worker(ws, name="w").run_once()
    assert other.jobs.get(OP, job.id).status == "cancelled"
    assert len(shards) == 1


@pytest.mark.parametrize("kind", ["importance", "report"])
def test_the_other_job_kinds_report_progress_between_start_and_end(team, rows64, kind, monkeypatch):
    from explain.output.importance_job import importance_job
    from explain.report.job import report_job

    ws, other = team
    model, x = rows64
    seen = []
    _wrap_progress(monkeypatch, kind, lambda done, total, forward: (seen.append(done / total), forward(done, total)))
    if kind == "importance":
        params, arrays, title = importance_job(model, "cancer", 1, x[:4], depth=1, steps=8)
    else:
        params, arrays, title = report_job(model, "cancer", 1, x[:4], methods=("integrated_gradients",))
    job = ws.jobs.submit(ALICE, kind, params, title=title, inputs=arrays, priority="interactive")
    assert Worker(ws, name="w").run_once().status == "done"
    assert any(0 < f < 1 for f in seen), seen  # it moved before it ended
    assert other.jobs.get(OP, job.id).progress == 1.0
