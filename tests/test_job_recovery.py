"""Recovery as a server or a worker starts (`explain.service.worker.recover_now`): a job left "running"
by a worker of this host whose process is gone (a SIGKILLed ``serve``, app or ``worker``) goes back to
the queue at once, without waiting for its heartbeat to go stale and without anyone opening a page or
sending a request; ``worker --once`` then runs it, and so do the embedded workers of ``serve`` and the app
(before anyone signs in). A pool's recovery thread also takes back jobs of workers that die later, while
all its workers are busy. A worker that still runs, another host's worker and a worker named with
``--name`` keep their jobs until the heartbeat says otherwise."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explain.service.models import ModelCache
from explain.service.runners import explain_job
from explain.service.worker import worker_gone
from explain.workspace import Actor, open_workspace
from sample_models import sample_inputs, sample_registry_files

pytest_plugins = ["tests.workspace_db"]

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)
HOST = socket.gethostname()


def _dead_pid() -> int:
    """The pid of a process that ran and was reaped: no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_gone_knows_only_this_hosts_workers_by_their_pid():
    dead = _dead_pid()
    for name in (f"{HOST}:{dead}:embedded", f"{HOST}:{dead}:12345", f"{HOST}:{dead}:cli", f"{HOST}:gpu1:{dead}"):
        assert worker_gone(name), name
    for name in (f"{HOST}:{os.getpid()}:embedded", f"{HOST}:gpu0:{os.getpid()}", f"other-host:{dead}:embedded",
                 "gpu-0", f"{HOST}:{dead}", f"{HOST}:{dead}:custom", ""):
        assert not worker_gone(name), name


def test_a_killed_but_unreaped_worker_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not worker_gone(f"{HOST}:{proc.pid}:embedded")
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not worker_gone(f"{HOST}:{proc.pid}:embedded"):  # a zombie until we wait for it
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def team(tmp_path):
    url = f"sqlite:///{tmp_path / 'glassbox.db'}"
    ws = open_workspace(url, home=tmp_path / "home")
    ws.seed(sample_registry_files())
    ws.users.add(OP, "alice", "admin")
    env = {**os.environ, "GLASSBOX_DATABASE_URL": url, "GLASSBOX_HOME": str(ws.home), "PYTHONPATH": str(ROOT),
           "GLASSBOX_JOB_STALE_S": "3600"}  # no heartbeat goes stale during these tests
    yield ws, env
    ws.close()


def _claimed_job(ws, worker: str):
    """An explain job, claimed by ``worker`` just now (its heartbeat is fresh)."""
    model = ModelCache(ws).get(Actor("alice"), "cancer", 1)
    x = sample_inputs("cancer")["inputs"][:2]
    params, arrays, title = explain_job(model, "cancer", 1, x, {"method": "integrated_gradients", "steps": 8})
    job = ws.jobs.submit(Actor("alice"), "explain", params, title=title, inputs=arrays, priority="interactive")
    claimed = ws.jobs.claim(worker, only=job.id)
    assert claimed.status == "running" and claimed.worker == worker
    return claimed


def test_recover_takes_back_a_gone_workers_job_at_once_and_leaves_the_others(team):
    from explain.service.worker import recover_now

    ws, _ = team
    dead = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")
    alive = _claimed_job(ws, f"{HOST}:{os.getpid()}:embedded")
    elsewhere = _claimed_job(ws, f"other-host:{_dead_pid()}:embedded")
    named = _claimed_job(ws, "gpu-box-7")
    (back,) = recover_now(ws)
    assert back.id == dead.id and back.status == "queued" and back.worker is None and "lost its worker" in back.error
    for job in (alive, elsewhere, named):
        assert ws.jobs.get(OP, job.id).status == "running"


def test_worker_once_requeues_a_dead_servers_job_as_it_starts_and_runs_it(team):
    ws, env = team
    job = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")  # what a SIGKILLed `serve` leaves behind
    done = subprocess.run([sys.executable, "-m", "explain", "worker", "--once", "--workers", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ran"] == 1 and len(out["workers"]) == 2 and all(worker_gone(w) for w in out["workers"])  # ended
    finished = ws.jobs.get(OP, job.id)
    assert finished.status == "done" and finished.attempts == 2 and finished.run == job.id
    assert finished.worker in out["workers"]


def test_serve_requeues_a_dead_workers_job_as_it_starts_with_no_request(team):
    ws, env = team
    job = _claimed_job(ws, f"{HOST}:gpu0:{_dead_pid()}")  # a SIGKILLed `worker --gpu 0`
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "GLASSBOX_EXTERNAL_WORKER": "1"}  # no worker of its own: the job must only be queued again
    server = subprocess.Popen([sys.executable, "-m", "explain", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while ws.jobs.get(OP, job.id).status == "running":
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "serve did not take the job back"
            time.sleep(0.1)
        back = ws.jobs.get(OP, job.id)
        assert back.status == "queued" and back.worker is None and back.attempts == 1
    finally:
        server.terminate()
        server.wait(30)


def test_the_app_requeues_a_dead_workers_job_when_it_opens_its_workspace(team, monkeypatch):
    """Streamlit runs no app code before a first session: the app's workspace open (the first thing
    any page, the sign-in form included, does) takes the job back, before any page draws."""
    from streamlit.testing.v1 import AppTest

    ws, env = team
    job = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")
    for key in ("GLASSBOX_DATABASE_URL", "GLASSBOX_HOME", "GLASSBOX_JOB_STALE_S"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("GLASSBOX_EXTERNAL_WORKER", "1")
    ws.users.add(OP, "ada", "admin", "admin-pass-1")  # accounts: the session only reaches the sign-in form
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert [t for t in at.text_input if t.label == "Password"]
    back = ws.jobs.get(OP, job.id)
    assert back.status == "queued" and back.worker is None


# -- in-process: a pool takes back and runs a dead worker's job as it starts, and later too ----------


@pytest.fixture
def shared_team(workspace):
    """The queue on SQLite and PostgreSQL, with the samples and alice."""
    workspace.seed(sample_registry_files())
    workspace.users.add(OP, "alice", "admin")
    return workspace


def _until(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_embedded_workers_finish_a_dead_servers_job_as_they_start_with_no_page_or_request(shared_team, monkeypatch):
    """What ``serve`` and the app do as they start (`start_embedded`): the job is queued again and run."""
    from explain.service.worker import start_embedded, stop_embedded

    monkeypatch.setenv("GLASSBOX_JOB_STALE_S", "3600")  # only the dead pid can free it
    ws = shared_team
    job = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")
    start_embedded(ws, workers=2)
    try:
        _until(lambda: ws.jobs.get(OP, job.id).status == "done", "the restarted server never finished the job")
    finally:
        stop_embedded(ws)
    done = ws.jobs.get(OP, job.id)
    assert done.attempts == 2 and done.run == job.id and done.worker.startswith(f"{HOST}:{os.getpid()}:embedded")


def test_a_pool_takes_back_a_job_whose_worker_died_later_even_while_all_its_workers_are_busy(
        shared_team, monkeypatch):
    import threading

    from explain.service.runners import RUNNERS
    from explain.service.worker import WorkerPool

    monkeypatch.setenv("GLASSBOX_JOB_STALE_S", "2")  # recovery every 0.5 s
    ws = shared_team
    busy, release = threading.Event(), threading.Event()

    def block(ctx):
        busy.set()
        assert release.wait(120)
        raise RuntimeError("released")

    monkeypatch.setitem(RUNNERS, "block", block)
    ws.jobs.submit(Actor("alice"), "block", {})
    pool = WorkerPool(ws, 1, name="pool").start()
    try:
        assert busy.wait(120)  # its only worker is busy from now on
        job = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")  # a server that died after this one started
        _until(lambda: ws.jobs.get(OP, job.id).status == "queued", "the recovery thread never took it back")
        release.set()
        _until(lambda: ws.jobs.get(OP, job.id).status == "done", "the pool never ran it")
    finally:
        release.set()
        pool.shutdown()
    assert ws.jobs.get(OP, job.id).worker == "pool"


def test_the_app_runs_a_dead_servers_job_before_anyone_signs_in(team, monkeypatch):
    """Its workers start with its workspace (`ui.workspace._recover`), not with the first signed-in page."""
    from streamlit.testing.v1 import AppTest

    from explain.service.worker import stop_embedded

    ws, env = team
    job = _claimed_job(ws, f"{HOST}:{_dead_pid()}:embedded")
    for key in ("GLASSBOX_DATABASE_URL", "GLASSBOX_HOME", "GLASSBOX_JOB_STALE_S"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("GLASSBOX_EXTERNAL_WORKER", raising=False)
    ws.users.add(OP, "ada", "admin", "admin-pass-1")  # accounts: the session only reaches the sign-in form
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
        assert not at.exception, at.exception
        assert [t for t in at.text_input if t.label == "Password"]
        _until(lambda: ws.jobs.get(OP, job.id).status == "done", "the app's workers never ran the job")
    finally:
        stop_embedded(ws)
