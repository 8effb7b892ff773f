"""The queue's worker: claims jobs (`explain.workspace.jobs`), runs them (`explain.service.runners`)
and saves each result as a run, whole, under the job's id.

``python -m explain worker`` runs one in its own process (one per GPU); the app and the API start
one in a thread unless ``GLASSBOX_EXTERNAL_WORKER=1``. While a job runs, a heartbeat thread tells
the queue the worker is alive; every worker, when it starts and between jobs, takes back the jobs
of workers that stopped answering (`Jobs.recover`), and those of workers of this host whose
process is gone at once (`worker_gone`). The app, ``serve`` and ``worker`` call `recover_now` as
they start, so a job a killed server left "running" is queued again before anyone asks.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from explain.config import job_heartbeat_s, job_max_attempts, job_stale_s
from explain.errors import Cancelled, one_line
from explain.service.models import ModelCache
from explain.service.runners import RUNNERS, JobContext
from explain.workspace import Workspace
from explain.workspace.jobs import JobInfo, LostJob

log = logging.getLogger("glassbox.worker")


def _pid_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (a zombie, killed but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux), or it just ended
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _name_pattern(host: str) -> re.Pattern:
    """The names this module gives workers of ``host``: ``host:PID:THREAD``, ``host:PID:embedded``,
    ``host:PID:cli`` (`explain.service.client.run_here`) and ``host:gpuN:PID`` (``worker --gpu N``)."""
    return re.compile(rf"^{re.escape(host)}:(?:(?P<pid>\d+):(?:\d+|embedded|cli)|gpu\d+:(?P<gpu_pid>\d+))$")


def worker_gone(name: str) -> bool:
    """True when ``name`` is a worker of this host (as this module names them) whose process no
    longer exists: its jobs can go back to the queue at once, without waiting for a stale heartbeat.
    A name given with ``worker --name``, or another host's worker, is never judged here (False):
    their jobs wait for ``GLASSBOX_JOB_STALE_S``."""
    found = _name_pattern(socket.gethostname()).match(name or "")
    if found is None:
        return False
    return _pid_gone(int(found["pid"] or found["gpu_pid"]))


def recover_now(ws: Workspace) -> list[JobInfo]:
    """What a server or a worker does as it starts, before any page or request: jobs left "running"
    by a worker of this host that no longer exists (a SIGKILLed server or worker) go back to the
    queue at once, and so do jobs whose heartbeat is stale (`Jobs.recover`)."""
    back = ws.jobs.recover(job_stale_s(), job_max_attempts(), gone=worker_gone)
    for job in back:
        log.info("recovered job %s: %s", job.id, job.status)
    return back


class Worker:
    def __init__(self, ws: Workspace, name: str | None = None, poll_s: float = 0.5):
        self.ws = ws
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"
        self.poll_s = poll_s
        self.models = ModelCache(ws)
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by `Jobs.on_submit` in this process: no wait for the next poll
        self._recovered_at = float("-inf")

    def recover(self) -> list[JobInfo]:
        """Take back the jobs of workers that stopped answering (at most every few seconds)."""
        now = time.monotonic()
        if now - self._recovered_at < min(5.0, job_stale_s() / 4):
            return []
        self._recovered_at = now
        return recover_now(self.ws)

    def run_forever(self) -> int:
        """Run jobs until `stop` is set; the number run."""
        ran = 0
        while not self.stop.is_set():
            try:
                if self.run_once():
                    ran += 1
                    continue
            except Exception:  # a database hiccup: log it, keep serving
                log.exception("worker %s: claiming a job failed", self.name)
            self.wake.wait(self.poll_s)
            self.wake.clear()
        return ran

    def run_once(self) -> JobInfo | None:
        """Take back stale jobs, then claim and run the next job; the finished job, or None if idle."""
        self.recover()
        job = self.ws.jobs.claim(self.name, tuple(RUNNERS))
        if job is None:
            return None
        self.run_job(job)
        return self.ws.jobs.get_unchecked(job.id)

    def run_job(self, job: JobInfo) -> None:
        jobs, me = self.ws.jobs, self.name
        state = {"fraction": 0.0, "sent": 0.0, "cancel": False, "lost": False}
        done = threading.Event()

        def beat() -> None:  # the heartbeat, also while a chunk runs between progress reports
            while not done.wait(job_heartbeat_s()):
                try:
                    state["cancel"] = jobs.heartbeat(job.id, me, state["fraction"]) or state["cancel"]
                except LostJob:
                    state["lost"] = True
                    return
                except Exception:
                    log.exception("worker %s: heartbeat failed", me)

        def progress(done_n: int, total: int) -> None:
            state["fraction"] = done_n / total if total else 0.0
            now = time.monotonic()
            if now - state["sent"] > 0.25:  # at most four writes a second
                state["sent"] = now
                try:
                    state["cancel"] = jobs.heartbeat(job.id, me, state["fraction"]) or state["cancel"]
                except LostJob:
                    state["lost"] = True
            if state["cancel"] or state["lost"]:
                raise Cancelled("The job was cancelled.")

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            if jobs.heartbeat(job.id, me):  # cancelled between claim and start
                raise Cancelled("The job was cancelled.")
            def publish(arrays) -> None:
                try:
                    jobs.publish_partial(job.id, me, arrays, state["fraction"])
                except LostJob:
                    state["lost"] = True
                    raise Cancelled("The job was taken back from this worker.") from None

            ctx = JobContext(self.ws, job, jobs.inputs(job), progress, self.models, publish)
            record = RUNNERS[job.kind](ctx)
            if state["lost"]:
                return
            run = self.ws.runs.save(job.owner_actor, record, run_id=job.id)
            jobs.finish(job.id, me, run.id)
        except Cancelled:
            jobs.mark_cancelled(job.id, me)
        except Exception as exc:  # the job fails with its reason; the worker goes on
            log.info("worker %s: job %s failed: %s", me, job.id, one_line(exc))
            jobs.fail(job.id, me, one_line(exc))
        finally:
            done.set()
            thread.join(timeout=5)


_EMBEDDED: dict[str, tuple[Worker, threading.Thread]] = {}
_EMBEDDED_LOCK = threading.Lock()


def start_embedded(ws: Workspace) -> Worker:
    """One worker thread per workspace in this process (the app's and the API's own)."""
    with _EMBEDDED_LOCK:
        key = f"{ws.url}|{ws.home}"
        found = _EMBEDDED.get(key)
        if found is not None and found[1].is_alive():
            return found[0]
        worker = Worker(ws, name=f"{socket.gethostname()}:{os.getpid()}:embedded")
        ws.jobs.on_submit.append(worker.wake.set)
        thread = threading.Thread(target=worker.run_forever, name="glassbox-worker", daemon=True)
        thread.start()
        _EMBEDDED[key] = (worker, thread)
        return worker


def stop_embedded(ws: Workspace) -> None:
    with _EMBEDDED_LOCK:
        found = _EMBEDDED.pop(f"{ws.url}|{ws.home}", None)
    if found is not None:
        found[0].stop.set()
        found[0].wake.set()
        if found[0].wake.set in ws.jobs.on_submit:
            ws.jobs.on_submit.remove(found[0].wake.set)
        found[1].join(timeout=30)
