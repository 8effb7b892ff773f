"""The job queue (`explain.workspace.jobs`) and its worker (`explain.service.worker`), on SQLite and
PostgreSQL: the order (interactive first, round-robin over owners), atomic claims, cancel,
permissions, stale jobs taken back, and a worker process killed with SIGKILL mid-job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from explain.errors import Cancelled, PermissionDenied
from explain.output.methods import get_method
from explain.service.models import ModelCache
from explain.service.runners import RUNNERS, explain_job
from explain.service.worker import Worker
from explain.workspace import Actor
from explain.workspace.jobs import Jobs, QueueFull
from explain.workspace.schema import Job
from sample_models import load_sample, sample_inputs, sample_registry_files

pytest_plugins = ["tests.workspace_db"]

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


@pytest.fixture
def team(workspace):
    """A workspace with the samples and four editors (alice is the first admin)."""
    workspace.seed(sample_registry_files())
    workspace.users.add(OP, "admin", "admin")
    for name in ("alice", "bob", "carol", "dave"):
        workspace.users.add(OP, name, "editor")
    workspace.users.add(OP, "vera", "viewer")
    return workspace


def _submit(ws, who: str, priority: str = "batch", kind: str = "test", **params):
    return ws.jobs.submit(Actor(who), kind, params, title=f"{who} {priority}", priority=priority)


def test_interactive_first_then_round_robin_over_owners(team):
    for who, n in (("alice", 3), ("bob", 2), ("carol", 1)):
        for _ in range(n):
            _submit(team, who)
    _submit(team, "dave", "interactive")  # submitted last, runs first
    order = [team.jobs.claim("w1").owner for _ in range(7)]
    assert order == ["dave", "alice", "bob", "carol", "alice", "bob", "alice"]
    assert team.jobs.claim("w1") is None


def test_an_owner_served_recently_waits_for_the_others(team):
    first = _submit(team, "alice")
    assert team.jobs.claim("w1").id == first.id  # alice was just served
    _submit(team, "alice")
    _submit(team, "bob")  # submitted after alice's second job, but bob was never served
    assert [team.jobs.claim("w1").owner for _ in range(2)] == ["bob", "alice"]


def test_list_shows_the_queue_in_the_order_workers_take_it(team):
    for who in ("alice", "alice", "bob"):
        _submit(team, who)
    _submit(team, "carol", "interactive")
    listed = team.jobs.list(Actor("vera"))
    assert [(j.owner, j.priority) for j in listed] == [("carol", "interactive"), ("alice", "batch"),
                                                       ("bob", "batch"), ("alice", "batch")]


def test_each_job_is_claimed_by_exactly_one_of_four_racing_workers(team):
    ids = {_submit(team, who).id for who in ("alice", "bob", "carol", "dave") for _ in range(5)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name):
        while (job := team.jobs.claim(name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # all of them, none twice


def test_permissions_viewer_may_not_submit_and_only_owner_or_admin_cancel(team):
    with pytest.raises(PermissionDenied):
        _submit(team, "vera")
    job = _submit(team, "alice")
    with pytest.raises(PermissionDenied):
        team.jobs.cancel(Actor("bob"), job.id)
    assert team.jobs.cancel(Actor("admin"), job.id).status == "cancelled"
    assert team.jobs.get(Actor("vera"), job.id).error == "cancelled by admin"


def test_queue_full_per_owner(team):
    team.jobs.submit(Actor("alice"), "test", {}, max_active=2)
    team.jobs.submit(Actor("alice"), "test", {}, max_active=2)
    with pytest.raises(QueueFull):
        team.jobs.submit(Actor("alice"), "test", {}, max_active=2)
    team.jobs.submit(Actor("bob"), "test", {}, max_active=2)  # per owner


def test_cancelled_queued_job_is_never_claimed(team):
    job = _submit(team, "alice")
    team.jobs.cancel(Actor("alice"), job.id)
    assert team.jobs.claim("w1") is None


def _slow_runner(steps: int, started: threading.Event | None = None):
    def run(ctx):
        for i in range(steps):
            ctx.progress(i + 1, steps)
            if started is not None:
                started.set()
            time.sleep(0.05)
        raise AssertionError("a cancelled job ran to its end")
    return run


def test_cancel_a_running_job_stops_it_at_its_next_progress_report(team, monkeypatch):
    started = threading.Event()
    monkeypatch.setitem(RUNNERS, "slow", _slow_runner(400, started))
    job = _submit(team, "alice", kind="slow")
    worker = Worker(team, name="w1")
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    assert started.wait(60)
    assert team.jobs.cancel(Actor("alice"), job.id).cancel_requested
    thread.join(60)
    done = team.jobs.get(Actor("alice"), job.id)
    assert done.status == "cancelled" and done.run is None
    assert team.runs.list(Actor("alice")) == []


def test_progress_reported_by_a_runner_reaches_the_row(team, monkeypatch):
    seen = []

    def run(ctx):
        for i in range(4):
            time.sleep(0.3)
            ctx.progress(i + 1, 4)
            seen.append(team.jobs.get(Actor("vera"), ctx.job.id).progress)
        raise Cancelled("stop here")

    monkeypatch.setitem(RUNNERS, "steps", run)
    _submit(team, "alice", kind="steps")
    Worker(team).run_once()
    assert seen == [0.25, 0.5, 0.75, 1.0]


def test_a_failing_job_fails_with_its_reason_and_the_worker_goes_on(team, monkeypatch):
    def boom(_ctx):
        raise RuntimeError("the model fell over\nsecond line")

    monkeypatch.setitem(RUNNERS, "boom", boom)
    bad = _submit(team, "alice", kind="boom")
    worker = Worker(team)
    assert worker.run_once().status == "failed"
    assert team.jobs.get(OP, bad.id).error == "RuntimeError: the model fell over"


def _explain_job(ws, who: str, rows: slice, priority: str = "interactive", **parameters):
    model = ModelCache(ws).get(Actor(who), "cancer", 1)
    x = sample_inputs("cancer")["inputs"][rows]
    params, arrays, title = explain_job(model, "cancer", 1, x, {"method": "integrated_gradients", **parameters})
    return ws.jobs.submit(Actor(who), "explain", params, title=title, inputs=arrays, priority=priority), x


def test_an_explain_job_saves_the_same_numbers_as_the_method_as_a_whole_run(team):
    job, x = _explain_job(team, "alice", slice(0, 5), steps=32)
    finished = Worker(team).run_once()
    assert finished.status == "done" and finished.run == job.id and finished.progress == 1.0
    run = team.runs.open(Actor("vera"), finished.run)
    assert run.info.author == "alice" and run.info.page == "output" and run.info.method == "integrated_gradients"
    want = get_method("integrated_gradients").explain(load_sample("cancer"), x, steps=32, use_cache=False)
    np.testing.assert_allclose(run.results["0/values"], want.values, atol=1e-6)
    np.testing.assert_array_equal(run.inputs["inputs"], x)
    assert run.info.params == {"integrated_gradients": run.info.params["integrated_gradients"]}
    assert run.info.params["integrated_gradients"]["steps"] == 32


def test_saving_a_jobs_run_twice_keeps_the_first(team):
    job, _ = _explain_job(team, "alice", slice(0, 2))
    Worker(team).run_once()
    record_again = team.runs.open(OP, job.id)
    from explain.workspace import RunRecord

    again = team.runs.save(Actor("alice"), RunRecord(page="output", model="cancer", version=1, title="dup"),
                           run_id=job.id)
    assert again.title == record_again.info.title
    assert len(team.runs.list(OP)) == 1


def test_two_processes_saving_one_run_id_at_once_both_get_the_one_run(team, monkeypatch):
    """The race `Runs.save`'s first look cannot see (two servers saving a sample's first view, two workers
    finishing one retried job): the second insert meets the first's row and returns it, no IntegrityError."""
    from sqlalchemy.orm import Session

    from explain.workspace import RunRecord
    from explain.workspace.schema import Run

    rid = "f" * 32
    first = team.runs.save(Actor("alice"), RunRecord(page="output", model="cancer", version=1, title="first"),
                           run_id=rid)
    real_get, looks = Session.get, []

    def get(session, cls, key, *args, **kwargs):  # the first look misses: the other process has not committed
        if cls is Run and key == rid and not looks:
            looks.append(key)
            return None
        return real_get(session, cls, key, *args, **kwargs)

    monkeypatch.setattr(Session, "get", get)
    second = team.runs.save(Actor("bob"), RunRecord(page="output", model="cancer", version=1, title="second"),
                            run_id=rid)
    assert looks == [rid]
    assert (second.id, second.title, second.author) == (rid, "first", "alice") == (first.id, first.title, first.author)
    assert len(team.runs.list(OP)) == 1


def _age_heartbeat(ws, job_id: str, seconds: float = 3600) -> None:
    from datetime import timedelta

    from explain.workspace.schema import utcnow

    with ws.core.db.transaction() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat=utcnow() - timedelta(seconds=seconds)))


def test_a_stale_running_job_goes_back_to_the_queue_then_fails_after_max_attempts(team):
    job = _submit(team, "alice")
    jobs: Jobs = team.jobs
    for attempt in (1, 2):
        claimed = jobs.claim(f"dead-{attempt}")
        assert claimed.id == job.id and claimed.attempts == attempt
        assert jobs.recover(stale_s=30, max_attempts=3) == []  # its heartbeat is fresh
        _age_heartbeat(team, job.id)
        (back,) = jobs.recover(stale_s=30, max_attempts=3)
        assert back.status == "queued" and back.worker is None and "lost its worker" in back.error
    jobs.claim("dead-3")
    _age_heartbeat(team, job.id)
    (gone,) = jobs.recover(stale_s=30, max_attempts=3)
    assert gone.status == "failed" and gone.attempts == 3
    assert "stopped answering during each of 3 attempts" in gone.error
    assert jobs.claim("w") is None


def test_a_recovered_job_is_no_longer_its_old_workers(team):
    from explain.workspace.jobs import LostJob

    job = _submit(team, "alice")
    team.jobs.claim("old")
    _age_heartbeat(team, job.id)
    team.jobs.recover(stale_s=1, max_attempts=3)
    team.jobs.claim("new")
    with pytest.raises(LostJob):
        team.jobs.heartbeat(job.id, "old")
    assert not team.jobs.finish(job.id, "old", "x")  # the old worker's late result is not taken
    assert team.jobs.get(OP, job.id).status == "running"


# -- a real worker process killed mid-job --------------------------------------------------------
def _worker_process(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "explain", "worker", "--poll", "0.1", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_a_worker_mid_job_then_restart_retries_it_without_a_partial_run(tmp_path):
    from explain.workspace import open_workspace

    db_url = f"sqlite:///{tmp_path / 'glassbox.db'}"  # the queue logic runs on both backends above
    ws = open_workspace(db_url, home=tmp_path / "home")
    ws.seed(sample_registry_files())
    ws.users.add(OP, "alice", "admin")
    env = {**os.environ, "GLASSBOX_DATABASE_URL": db_url, "GLASSBOX_HOME": str(ws.home),
           "GLASSBOX_JOB_HEARTBEAT_S": "0.2", "GLASSBOX_JOB_STALE_S": "2", "GLASSBOX_JOB_MAX_ATTEMPTS": "3",
           "PYTHONPATH": str(ROOT)}
    # 128 chunks of 16 points each: progress is reported many times before the end.
    job, x = _explain_job(ws, "alice", slice(0, 8), steps=256, batch_size=16, tolerance=1.0)
    proc = _worker_process(env)
    try:
        deadline = time.monotonic() + 180
        while True:
            seen = ws.jobs.get(OP, job.id)
            if seen.status == "running" and 0 < seen.progress < 1:
                break
            assert seen.status in ("queued", "running"), seen
            assert time.monotonic() < deadline, "the worker never reported progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = ws.jobs.get(OP, job.id)
    assert killed.status == "running" and killed.attempts == 1  # what a dead worker leaves
    assert ws.runs.list(OP) == []  # no half-written result
    time.sleep(2.5)  # its heartbeat goes stale
    restart = subprocess.run([sys.executable, "-m", "explain", "worker", "--once"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr
    done = ws.jobs.get(OP, job.id)
    assert done.status == "done" and done.attempts == 2 and done.run == job.id
    (run,) = ws.runs.list(OP)
    saved = ws.runs.open(OP, run.id)
    want = get_method("integrated_gradients").explain(load_sample("cancer"), x, steps=256, tolerance=1.0,
                                                      batch_size=16, use_cache=False)
    np.testing.assert_allclose(saved.results["0/values"], want.values, atol=1e-6)
    ws.close()


def test_a_worker_per_gpu_sees_only_its_gpu_and_says_which(tmp_path, monkeypatch):
    """``worker --gpu N``: CUDA_VISIBLE_DEVICES=N before anything initialises CUDA, and the
    queue names the worker after its GPU."""
    import json
    import subprocess
    import sys

    env = {**__import__("os").environ, "GLASSBOX_HOME": str(tmp_path / "home")}
    code = ("import os, sys; from explain.cli import main; rc = main(['worker', '--gpu', '3', '--once']); "
            "print(os.environ['CUDA_VISIBLE_DEVICES'], file=sys.stderr); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["worker"].split(":")[1] == "gpu3"
    assert done.stderr.strip().splitlines()[-1] == "3"
    bad = subprocess.run([sys.executable, "-m", "explain", "worker", "--gpu", "-1", "--once"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "GPU index" in bad.stderr
