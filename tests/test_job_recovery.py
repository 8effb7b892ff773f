"""Recovery as a server or a worker starts (`explain.service.worker.recover_now`): a job left "running"
by a worker of this host whose process is gone (a SIGKILLed ``serve``, app or ``worker``) goes back to
the queue at once, without waiting for its heartbeat to go stale and without anyone opening a page or
sending a request; ``worker --once`` then runs it. A worker that still runs, another host's worker and a
worker named with ``--name`` keep their jobs until the heartbeat says otherwise."""
from __future__ import annotations

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
    done = subprocess.run([sys.executable, "-m", "explain", "worker", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    finished = ws.jobs.get(OP, job.id)
    assert finished.status == "done" and finished.attempts == 2 and finished.run == job.id


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
